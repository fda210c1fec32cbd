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
pub const ENV_NOT_SETTINGS: [&str; 7] = [
    ENV_CONFIG_FILE,
    "TENSORPOOL_STATS",
    "TENSORPOOL_RECORD",
    "TENSORPOOL_RECORD_PARENT",
    crate::global::recording::ENV_RECORD_OF,
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
        let (vars, mut unreadable) = env_vars();
        match unreadable.is_empty() {
            true => Self::from_vars(vars),
            false => Err(unreadable.swap_remove(0)),
        }
    }

    /// [`from_env`](Self::from_env) over the variables given (names with other
    /// prefixes are passed over).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
        let (config, mut errors) = Self::from_vars_reporting(vars);
        match errors.is_empty() {
            true => Ok(config),
            false => Err(errors.swap_remove(0)),
        }
    }

    /// The config of the environment for a program that must start whatever the
    /// environment says (a process-wide allocator): each bad variable (or a bad
    /// file) is passed over, the default standing for it, and returned among the
    /// errors to report; variables that cannot apply together are all passed over.
    pub fn from_env_reporting() -> (Config, Vec<Error>) {
        Self::from_env_reporting_over(Config::default())
    }

    /// [`from_env_reporting`](Self::from_env_reporting) with `base` in place of the
    /// defaults (the preloaded C library's, whose classes start at 16 B): the file
    /// and the variables change it, and it stands where they cannot apply.
    pub fn from_env_reporting_over(base: Config) -> (Config, Vec<Error>) {
        let (vars, mut unreadable) = env_vars();
        let (config, errors) = Self::from_vars_reporting_over(base, vars);
        unreadable.extend(errors);
        (config, unreadable)
    }

    /// [`from_env_reporting`](Self::from_env_reporting) over the variables given.
    pub fn from_vars_reporting(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> (Config, Vec<Error>) {
        Self::from_vars_reporting_over(Config::default(), vars)
    }

    /// [`from_env_reporting_over`](Self::from_env_reporting_over) over the variables
    /// given.
    pub fn from_vars_reporting_over(
        base: Config,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> (Config, Vec<Error>) {
        let mut errors = Vec::new();
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        let mut table = toml::Table::try_from(&base).expect("a config is a table");
        if let Some((_, path)) = vars.iter().find(|(name, _)| name == ENV_CONFIG_FILE) {
            match Config::from_file_over(&base, path) {
                Ok(file) => table = toml::Table::try_from(&file).expect("a config is a table"),
                Err(e) => errors
                    .push(e.in_config(format_args!("{ENV_CONFIG_FILE}={path:?} (passed over)"))),
            }
        }
        // The base with the file's settings: what a variable passed over leaves.
        let before_vars = table.clone();
        let mut applied = Vec::new();
        for (name, text) in &vars {
            if ENV_NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let value = read_value(text);
            // Each variable alone first, so that an error names it.
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            match Config::deserialize(alone) {
                Ok(_) => {
                    table.insert(key.clone(), value);
                    applied.push((name, text, key));
                }
                Err(e) => errors.push(Error::InvalidConfig(format!(
                    "{name}={text:?}: {}; the variable is passed over",
                    e.message()
                ))),
            }
        }
        let combined = |table: &toml::Table| {
            Config::deserialize(table.clone())
                .map_err(|e| Error::InvalidConfig(e.message().to_string()))
                .and_then(|c| c.validate().map(|()| c))
        };
        let together = match combined(&table) {
            Ok(config) => return (config, errors),
            Err(e) => e,
        };
        // The one variable whose passing over lets all the others apply is at fault
        // (a threshold that is not a power of two beside an alignment and a smallest
        // block valid only together): it alone is passed over and named. Where more
        // than one would do (two limits at odds), none is singled out: see below.
        let mut culprits = applied.iter().filter_map(|(name, text, key)| {
            let mut rest = table.clone();
            restore(&mut rest, &before_vars, key);
            combined(&rest).ok().map(|config| (name, text, config))
        });
        if let (Some((name, text, config)), None) = (culprits.next(), culprits.next()) {
            errors.push(together.in_config(format_args!("{name}={text:?} (passed over)")));
            return (config, errors);
        }
        // A variable that cannot apply even alone over the base and the file (an
        // alignment that is not a power of two) is passed over and named: its setting
        // stays the base's or the file's; the others still apply.
        for (name, text, key) in applied {
            let mut alone = before_vars.clone();
            alone.insert(key.clone(), table[&key].clone());
            if let Err(e) = combined(&alone) {
                errors.push(e.in_config(format_args!("{name}={text:?} (passed over)")));
                restore(&mut table, &before_vars, &key);
            }
        }
        match combined(&table) {
            Ok(config) => (config, errors),
            Err(e) => {
                // Variables each good alone but not together: none of them applies;
                // the file's settings still do.
                let config = combined(&before_vars).unwrap_or(base);
                errors.push(e.in_config(
                    "the environment's variables cannot apply together (they are passed over)",
                ));
                (config, errors)
            }
        }
    }
}

/// Puts `key` of `table` back as `before` has it (or takes it out): a variable passed
/// over leaves the base's or the file's setting.
fn restore(table: &mut toml::Table, before: &toml::Table, key: &str) {
    match before.get(key) {
        Some(kept) => table.insert(key.to_string(), kept.clone()),
        None => table.remove(key),
    };
}

/// The variables of the prefix, and an error naming each setting whose value is not
/// UTF-8 (passed over). The variables that are not settings are read where they are
/// used (a recording's path need not be UTF-8), except the config file's.
fn env_vars() -> (Vec<(String, String)>, Vec<Error>) {
    settings_of(std::env::vars_os())
}

/// [`env_vars`] of the variables given.
fn settings_of(
    all: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> (Vec<(String, String)>, Vec<Error>) {
    let (mut vars, mut errors) = (Vec::new(), Vec::new());
    for (name, value) in all {
        let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
            continue;
        };
        if name != ENV_CONFIG_FILE && ENV_NOT_SETTINGS.contains(&name) {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.push((name.to_string(), value)),
            Err(v) => errors.push(Error::InvalidConfig(format!(
                "{name}={v:?}: the value is not UTF-8; the variable is passed over"
            ))),
        }
    }
    (vars, errors)
}

/// A variable's text as one TOML value, or as a string where it is not one (text
/// that reads as more than one value, `1\nfoo = 3`, is a string too).
fn read_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
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
            ("TENSORPOOL_MAX_RELEASE_DELAY_MS", "500"),
            ("TENSORPOOL_POOLS", "{64 = 1000, 128 = 500}"),
            ("TENSORPOOL_STATS", "1"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(c.memory_limit, Some(8 << 30));
        assert_eq!(c.soft_limit, Some(1 << 30));
        assert_eq!(c.background_release, Some(true));
        assert_eq!(c.release_delay_ms, Some(250));
        assert_eq!(c.max_release_delay_ms, Some(500));
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
            e.contains("cannot apply together") && e.contains("soft_limit"),
            "{e}"
        );
        // Text that reads as two TOML values is one string, which no size is.
        let e = err(&[("TENSORPOOL_MEMORY_LIMIT", "1\nfoo = 3")]);
        assert!(e.contains("TENSORPOOL_MEMORY_LIMIT"), "{e}");
        let e = err(&[("TENSORPOOL_CONFIG", "/nonexistent/tp.toml")]);
        assert!(
            e.contains("TENSORPOOL_CONFIG") && e.contains("cannot read"),
            "{e}"
        );
        // One "invalid configuration", the context before the reason.
        assert_eq!(e.matches("invalid configuration").count(), 1, "{e}");
        // Only a regular file is read, and only a small one: `/dev/zero`, read to its
        // end, filled the program's memory (a user hunt); a FIFO would block it.
        #[cfg(all(unix, not(miri)))]
        {
            let e = err(&[("TENSORPOOL_CONFIG", "/dev/zero")]);
            assert!(e.contains("not a regular file"), "{e}");
            let dir = std::env::temp_dir().join(format!("tp-env-big-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let fifo = dir.join("fifo.toml");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: `mkfifo` with a valid C string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let e = err(&[("TENSORPOOL_CONFIG", fifo.to_str().unwrap())]);
            assert!(e.contains("not a regular file"), "{e}");
            let big = dir.join("big.toml");
            std::fs::write(&big, "# padding\n".repeat(200_000)).unwrap();
            let e = err(&[("TENSORPOOL_CONFIG", big.to_str().unwrap())]);
            assert!(e.contains("larger than"), "{e}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_program_that_must_start_passes_over_each_bad_variable() {
        let (c, errors) = Config::from_vars_reporting(vars(&[
            ("TENSORPOOL_MEMORY_LIMIT", "8 GiB"),
            ("TENSORPOOL_SOFT_LIMT", "1"),
            ("TENSORPOOL_RELEASE_DELAY_MS", ""),
            ("TENSORPOOL_CONFIG", "/nonexistent/tp.toml"),
        ]));
        assert_eq!(c.memory_limit, Some(8 << 30), "the good variable applies");
        assert_eq!(c.release_delay_ms, Config::default().release_delay_ms);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        for name in [
            "TENSORPOOL_SOFT_LIMT",
            "TENSORPOOL_RELEASE_DELAY_MS",
            "TENSORPOOL_CONFIG",
        ] {
            assert!(text.iter().any(|t| t.contains(name)), "{name} in {text:?}");
        }
        let (c, errors) = Config::from_vars_reporting(vars(&[
            ("TENSORPOOL_SOFT_LIMIT", "2GiB"),
            ("TENSORPOOL_MEMORY_LIMIT", "1GiB"),
        ]));
        assert_eq!((c, errors.len()), (Config::default(), 1));
        // Over a file, variables that cannot apply together leave the file's settings.
        let dir = std::env::temp_dir().join(format!("tp-env-together-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("limit.toml");
        std::fs::write(&file, "memory_limit = \"4 GiB\"\n").unwrap();
        let (c, errors) = Config::from_vars_reporting(vars(&[
            ("TENSORPOOL_CONFIG", file.to_str().unwrap()),
            ("TENSORPOOL_SOFT_LIMIT", "2GiB"),
            ("TENSORPOOL_MEMORY_LIMIT", "1GiB"),
        ]));
        assert_eq!((c.memory_limit, c.soft_limit), (Some(4 << 30), None));
        assert_eq!(errors.len(), 1, "{errors:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        // A value its setting takes but cannot keep (an alignment that is not a
        // power of two) is passed over by name; the others still apply (all of them
        // went to the defaults before, under an error that named none).
        let (c, errors) = Config::from_vars_reporting(vars(&[
            ("TENSORPOOL_ALIGNMENT", "3"),
            ("TENSORPOOL_MEMORY_LIMIT", "10MiB"),
        ]));
        assert_eq!(c.memory_limit, Some(10 << 20));
        assert_eq!(c.alignment, Config::default().alignment);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].to_string();
        assert!(
            text.contains("TENSORPOOL_ALIGNMENT=\"3\" (passed over)")
                && text.contains("power of two"),
            "{text}"
        );
        // Settings valid only together still apply together.
        let (c, errors) = Config::from_vars_reporting(vars(&[
            ("TENSORPOOL_RELEASE_DELAY_MS", "10"),
            ("TENSORPOOL_MAX_RELEASE_DELAY_MS", "20"),
        ]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            (c.release_delay_ms, c.max_release_delay_ms),
            (Some(10), Some(20))
        );
    }

    #[test]
    fn a_variable_passed_over_leaves_the_base_or_the_files_setting() {
        // Over the process-wide allocator's base (16-byte classes), a bad alignment
        // used to put the defaults' 64 back, which then refused the base's 16-byte
        // blocks and dropped every other variable; a bad smallest block went to 64 B.
        let base = crate::global::process_defaults();
        let (c, errors) = Config::from_vars_reporting_over(
            base.clone(),
            vars(&[
                ("TENSORPOOL_ALIGNMENT", "3"),
                ("TENSORPOOL_MEMORY_LIMIT", "1GiB"),
            ]),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("TENSORPOOL_ALIGNMENT"));
        assert_eq!(
            (c.alignment, c.min_block_size, c.memory_limit),
            (16, 16, Some(1 << 30))
        );
        let (c, errors) = Config::from_vars_reporting_over(
            base.clone(),
            vars(&[("TENSORPOOL_MIN_BLOCK_SIZE", "1")]),
        );
        assert_eq!((c.min_block_size, errors.len()), (16, 1), "{errors:?}");
        // A file that says what the base says is not refused for what the defaults
        // say (the file used to be checked over the defaults' 64-byte alignment).
        let dir = std::env::temp_dir().join(format!("tp-env-base-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m16.toml");
        std::fs::write(&file, "min_block_size = 16\nmemory_limit = \"1 GiB\"\n").unwrap();
        let path = file.to_str().unwrap();
        let (c, errors) =
            Config::from_vars_reporting_over(base.clone(), vars(&[("TENSORPOOL_CONFIG", path)]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((c.min_block_size, c.memory_limit), (16, Some(1 << 30)));
        // A variable passed over leaves the file's setting.
        std::fs::write(&file, "alignment = 32\nmin_block_size = 32\n").unwrap();
        let (c, errors) = Config::from_vars_reporting_over(
            base,
            vars(&[("TENSORPOOL_CONFIG", path), ("TENSORPOOL_ALIGNMENT", "3")]),
        );
        assert_eq!((c.alignment, c.min_block_size, errors.len()), (32, 32, 1));
        std::fs::remove_dir_all(&dir).unwrap();
        // Variables valid only together stay together when a third is at fault (the
        // alignment was passed over with the bad threshold: it failed alone).
        let (c, errors) = Config::from_vars_reporting_over(
            crate::global::process_defaults(),
            vars(&[
                ("TENSORPOOL_ALIGNMENT", "64"),
                ("TENSORPOOL_MIN_BLOCK_SIZE", "64"),
                ("TENSORPOOL_SMALL_THRESHOLD", "1000"),
            ]),
        );
        assert_eq!((c.alignment, c.min_block_size), (64, 64));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("TENSORPOOL_SMALL_THRESHOLD"));
    }

    #[test]
    fn only_a_setting_whose_value_is_not_utf8_is_passed_over() {
        // A recording's path that is not UTF-8 is not a setting (it used to drop every
        // variable); a setting that is not UTF-8 is passed over alone.
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"r\xe9.csv".to_vec());
        let (vars, errors) = settings_of([
            ("TENSORPOOL_RECORD".into(), bad()),
            ("TENSORPOOL_RELEASE_DELAY_MS".into(), bad()),
            ("TENSORPOOL_MEMORY_LIMIT".into(), "1GiB".into()),
        ]);
        assert_eq!(vars, [("TENSORPOOL_MEMORY_LIMIT".into(), "1GiB".into())]);
        assert!(!vars.iter().any(|(n, _)| n == "TENSORPOOL_RECORD"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0]
            .to_string()
            .contains("TENSORPOOL_RELEASE_DELAY_MS"));
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
        // Over another base, a file changes only the settings it names.
        let base = Config {
            alignment: 16,
            min_block_size: 16,
            ..Config::default()
        };
        for file in [&toml_file, &json_file] {
            let path = file.to_str().unwrap().to_string();
            let (c, errors) = Config::from_vars_reporting_over(
                base.clone(),
                [("TENSORPOOL_CONFIG".into(), path)],
            );
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(
                (
                    c.alignment,
                    c.min_block_size,
                    c.memory_limit,
                    c.small_threshold
                ),
                (16, 16, Some(4 << 30), 16 << 10)
            );
        }
        let (c, errors) = Config::from_vars_reporting_over(
            base.clone(),
            vars(&[
                ("TENSORPOOL_SOFT_LIMIT", "2GiB"),
                ("TENSORPOOL_MEMORY_LIMIT", "1GiB"),
            ]),
        );
        assert_eq!(
            (c, errors.len()),
            (base, 1),
            "the base stands where they cannot apply"
        );
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
