//! A config from the environment: what a program that cannot take a config in code
//! (a process-wide allocator, a preloaded library) reads. The rules are on
//! [`Config::from_env`].

use super::Config;
use crate::error::{Error, Result};
use serde::Deserialize;

/// What every variable's name starts with.
pub const ENV_PREFIX: &str = "TENSORPOOL_";

/// The variable that names a config file.
pub const ENV_CONFIG_FILE: &str = "TENSORPOOL_CONFIG";

/// Variables of the prefix that are not settings: the config file, and those that
/// the preloaded library, the command's tests and its benchmarks read.
pub const ENV_NOT_SETTINGS: [&str; 5] = [
    ENV_CONFIG_FILE,
    "TENSORPOOL_STATS",
    "TENSORPOOL_RECORD",
    "TENSORPOOL_BENCH_THREADS",
    "TENSORPOOL_COMMAND",
];

impl Config {
    /// The config of the process's environment: the defaults, then the file
    /// `TENSORPOOL_CONFIG` names (TOML, or JSON if it ends in `.json`: the format
    /// `tensorpool plan` writes), then one variable per setting, its name in capitals
    /// after `TENSORPOOL_`, which wins over the file: `TENSORPOOL_MEMORY_LIMIT=8GiB`,
    /// `TENSORPOOL_RELEASE_DELAY_MS=never`, `TENSORPOOL_POOLS={64 = 1000}`.
    ///
    /// A value is read as a TOML value (a number, `true`, an inline table), and as a
    /// string where it is not one (`8 GiB`, `never`). An unknown variable of the
    /// prefix (other than [`ENV_NOT_SETTINGS`]), a value its setting cannot take, or
    /// settings that cannot apply together are an error that names the variable.
    ///
    /// ```
    /// use tensorpool::Config;
    ///
    /// let vars = [("TENSORPOOL_MEMORY_LIMIT", "8 GiB"), ("TENSORPOOL_RELEASE_DELAY_MS", "never")];
    /// let config = Config::from_vars(vars.map(|(k, v)| (k.to_string(), v.to_string())))?;
    /// assert_eq!(config.memory_limit, Some(8 << 30));
    /// assert_eq!(config.release_delay_ms, None);
    ///
    /// let err = Config::from_vars([("TENSORPOOL_MEMORY_LIMT".into(), "1".into())]).unwrap_err();
    /// assert!(err.to_string().contains("TENSORPOOL_MEMORY_LIMT"));
    /// # Ok::<(), tensorpool::Error>(())
    /// ```
    pub fn from_env() -> Result<Config> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
                continue;
            };
            let value = value.into_string().map_err(|v| {
                Error::InvalidConfig(format!("{name}={v:?}: the value is not UTF-8"))
            })?;
            vars.push((name.to_string(), value));
        }
        Self::from_vars(vars)
    }

    /// [`from_env`](Self::from_env) over the variables given (names with other
    /// prefixes are passed over).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        let mut table = match vars.iter().find(|(name, _)| name == ENV_CONFIG_FILE) {
            Some((_, path)) => file_table(path)
                .map_err(|e| Error::InvalidConfig(format!("{ENV_CONFIG_FILE}={path:?}: {e}")))?,
            None => toml::Table::new(),
        };
        for (name, text) in &vars {
            if ENV_NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let value = read_value(text);
            // Each variable alone first, so that an error names it.
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            Config::deserialize(alone)
                .map_err(|e| Error::InvalidConfig(format!("{name}={text:?}: {}", e.message())))?;
            table.insert(key, value);
        }
        let config = Config::deserialize(table)
            .map_err(|e| Error::InvalidConfig(format!("from the environment: {}", e.message())))?;
        config
            .validate()
            .map_err(|e| Error::InvalidConfig(format!("from the environment: {e}")))?;
        Ok(config)
    }
}

/// A variable's text as a TOML value, or as a string where it is not one.
fn read_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// A config file's settings as a table (JSON converted), checked as a whole config.
fn file_table(path: &str) -> Result<toml::Table> {
    Config::from_file(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidConfig(format!("cannot read {path}: {e}")))?;
    if path.ends_with(".json") {
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        toml::Table::try_from(json).map_err(|e| Error::InvalidConfig(e.to_string()))
    } else {
        toml::from_str(&text).map_err(|e| Error::InvalidConfig(e.message().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_setting_has_a_variable_and_values_read_as_toml_or_text() {
        let c = Config::from_vars(vars(&[
            ("TENSORPOOL_MEMORY_LIMIT", "8GiB"),
            ("TENSORPOOL_SOFT_LIMIT", "1073741824"),
            ("TENSORPOOL_BACKGROUND_RELEASE", "true"),
            ("TENSORPOOL_RELEASE_DELAY_MS", "250"),
            ("TENSORPOOL_POOLS", "{64 = 1000, 128 = 500}"),
            ("TENSORPOOL_STATS", "1"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(c.memory_limit, Some(8 << 30));
        assert_eq!(c.soft_limit, Some(1 << 30));
        assert_eq!(c.background_release, Some(true));
        assert_eq!(c.release_delay_ms, Some(250));
        assert_eq!(c.pools.len(), 2);
        assert_eq!(Config::from_vars(vars(&[])).unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_variable() {
        let err = |list: &[(&str, &str)]| Config::from_vars(vars(list)).unwrap_err().to_string();
        let e = err(&[("TENSORPOOL_MEMORY_LIMT", "1")]);
        assert!(
            e.contains("TENSORPOOL_MEMORY_LIMT") && e.contains("unknown field"),
            "{e}"
        );
        let e = err(&[("TENSORPOOL_MEMORY_LIMIT", "lots")]);
        assert!(e.contains("TENSORPOOL_MEMORY_LIMIT=\"lots\""), "{e}");
        let e = err(&[("TENSORPOOL_RELEASE_DELAY_MS", "-5")]);
        assert!(e.contains("TENSORPOOL_RELEASE_DELAY_MS"), "{e}");
        // Settings that cannot apply together.
        let e = err(&[
            ("TENSORPOOL_SOFT_LIMIT", "2GiB"),
            ("TENSORPOOL_MEMORY_LIMIT", "1GiB"),
        ]);
        assert!(
            e.contains("from the environment") && e.contains("soft_limit"),
            "{e}"
        );
        let e = err(&[("TENSORPOOL_CONFIG", "/nonexistent/tp.toml")]);
        assert!(
            e.contains("TENSORPOOL_CONFIG") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn variables_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("tp-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_file = dir.join("c.toml");
        std::fs::write(
            &toml_file,
            "memory_limit = \"4 GiB\"\nsmall_threshold = \"16 KiB\"\n",
        )
        .unwrap();
        let json_file = dir.join("c.json");
        std::fs::write(
            &json_file,
            r#"{"memory_limit": 4294967296, "small_threshold": 16384}"#,
        )
        .unwrap();
        for file in [&toml_file, &json_file] {
            let c = Config::from_vars(vars(&[
                ("TENSORPOOL_CONFIG", file.to_str().unwrap()),
                ("TENSORPOOL_MEMORY_LIMIT", "2 GiB"),
            ]))
            .unwrap();
            assert_eq!(
                (c.memory_limit, c.small_threshold),
                (Some(2 << 30), 16 << 10)
            );
        }
        std::fs::write(&toml_file, "smal_threshold = 1").unwrap();
        let e = Config::from_vars(vars(&[("TENSORPOOL_CONFIG", toml_file.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TENSORPOOL_CONFIG") && e.contains("smal_threshold"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
