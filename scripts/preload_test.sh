#!/usr/bin/env bash
# libtensorpool.so under real programs (LD_PRELOAD); the test command runs it.
#
#   the C test program (crates/tensorpool-malloc/tests/malloc_test.c): every exported
#   function on normal and edge inputs, threads freeing each other's blocks, fork()
#   while another thread allocates, dlopen() of libraries with thread-locals, frees a
#   program must not make (refused and counted); also with another allocator
#   preloaded after the library
#   tools that allocate in ways nobody here chose: python3, sort, git, a C++ program,
#   each compared with its output without the library
#   a NumPy workload with identical results, and NumPy's own tests (the memory-heavy
#   classes of test_multiarray.py) with the library under Python and NumPy
#   TENSORPOOL_RECORD: a program's recording, replayed and planned by the command
#   TENSORPOOL_STATS and a bad TENSORPOOL_* variable: reported, never fatal
#   a limited address space (ulimit -v): the program runs on tensorpool
#
# Expects .venv with NumPy (./scripts/test.sh makes it); builds the library (release)
# and uses the command that `cargo test` built (or $TENSORPOOL_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p tensorpool-malloc
LIB="$PWD/target/release/libtensorpool.so"
TP="${TENSORPOOL_BIN:-target/debug/tensorpool}"
if [ ! -x "$TP" ]; then
    cargo build --locked -p tensorpool-cli
fi
OUT=target/preload-test
mkdir -p "$OUT"
ROOT="$PWD"
PY=.venv/bin/python

echo "==> the C test program"
CFLAGS="-O1 -g -fno-builtin -pthread -Wall -Wextra -Werror"
cc $CFLAGS crates/tensorpool-malloc/tests/malloc_test.c -o "$OUT/malloc_test" -ldl
for lib in a b; do
    cc -O1 -shared -fPIC crates/tensorpool-malloc/tests/tls_lib.c -o "$OUT/libtp_tls_$lib.so"
done
LD_PRELOAD="$LIB" "$OUT/malloc_test" "$PWD/$OUT"
# Again with every block of 1 MiB or more in a region of its own (the huge tier,
# without expandable segments): many regions made and given back.
TENSORPOOL_HUGE_THRESHOLD=1MiB TENSORPOOL_EXPANDABLE_SEGMENTS=false \
    LD_PRELOAD="$LIB" "$OUT/malloc_test" "$PWD/$OUT"
# And in debug mode, whose call sites are backtraces: its forks while other threads
# allocate once hung in the child (the backtrace lock held at the fork).
TENSORPOOL_DEBUG=true LD_PRELOAD="$LIB" timeout 300 "$OUT/malloc_test" "$PWD/$OUT"
# With another allocator preloaded after the library (`tensorpool run` puts it before
# an LD_PRELOAD the program has): the blocks glibc's names serve (alignments beyond
# 4 KiB) are sized by the allocator that made them (jemalloc's malloc_usable_size,
# found first, crashed on glibc's). Where Debian's peer allocators are installed.
for next in /usr/lib/x86_64-linux-gnu/{libjemalloc.so.2,libmimalloc.so.2,libtcmalloc_minimal.so.4}; do
    if [ -e "$next" ]; then
        LD_PRELOAD="$LIB:$next" "$OUT/malloc_test" "$PWD/$OUT"
    else
        echo "skipped: $next is not installed"
    fi
done

echo "==> tools: the same output with and without the library"
same() {
    local want got
    want=$("$@" 2>&1)
    got=$(LD_PRELOAD="$LIB" "$@" 2>&1)
    if [ "$want" != "$got" ]; then
        echo "different output under the library: $*" >&2
        diff <(echo "$want") <(echo "$got") | head -20 >&2
        exit 1
    fi
    echo "ok: $(echo "$*" | head -c 70 | tr "\n" " ")"
}
seq 1 300000 | awk '{ print ($1 * 7919) % 300007 }' >"$OUT/numbers.txt"
same sort -n "$OUT/numbers.txt"
same python3 -c "import json, collections; d = {str(i): [i] * (i % 7) for i in range(200000)}; \
print(len(json.dumps(d)), collections.Counter(len(v) for v in d.values()).most_common(3))"
same git log --oneline -n 50 --stat
cat >"$OUT/new_delete.cpp" <<'CPP'
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>
#include <cstdio>
struct alignas(256) Wide { double v[40]; };
int main() {
    std::map<std::string, std::vector<int>> m;
    for (int i = 0; i < 100000; i++) m[std::to_string(i * 37 % 100003)].push_back(i);
    std::vector<std::unique_ptr<Wide>> w;
    for (int i = 0; i < 1000; i++) w.emplace_back(new Wide{});
    for (auto &p : w) if (reinterpret_cast<uintptr_t>(p.get()) % 256) return 1;
    auto *a = new (std::align_val_t(4096)) char[10000];
    if (reinterpret_cast<uintptr_t>(a) % 4096) return 2;
    operator delete[](a, std::align_val_t(4096));
    long sum = 0;
    for (auto &kv : m) sum += kv.second.size() + kv.first.size();
    std::printf("%zu %ld\n", m.size(), sum);
}
CPP
if command -v c++ >/dev/null; then
    c++ -O1 -std=c++17 "$OUT/new_delete.cpp" -o "$OUT/new_delete"
    same "$OUT/new_delete"
fi

echo "==> NumPy: a workload with identical results"
same "$PY" -c "
import numpy as np
rng = np.random.default_rng(0)
w = [rng.standard_normal((256, 256)) / 16 for _ in range(3)]
x = rng.standard_normal((64, 256))
for step in range(200):
    h = x
    for m in w:
        h = np.tanh(h @ m)
    grad = h.T @ x / 64
    w[0] -= 1e-3 * grad
    x = np.concatenate([x[1:], h[:1]])
print(repr(float(w[0].sum())), repr(float(h.std())))
"

echo "==> NumPy's own tests with the library preloaded"
./scripts/numpy_suite.sh --preload "$LIB"

echo "==> tensorpool run --record: a recording that the command replays and plans"
rm -f "$OUT/python.csv"
"$TP" run -q --library "$LIB" --record "$OUT/python.csv" -- "$PY" -c "
import numpy as np
a = [np.ones(1000 * i) for i in range(1, 200)]
del a
"
test "$(head -n 1 "$OUT/python.csv")" = "Thread,Time,Action,Pointer,Size,Stream"
test "$(wc -l <"$OUT/python.csv")" -gt 1000
"$TP" replay "$OUT/python.csv" --reps 1 >/dev/null
"$TP" plan "$OUT/python.csv" --config-out "$OUT/python.toml" \
    --plan-out "$OUT/python.plan.csv" >/dev/null
# Under bash, which passes the variables on from its own copy of the environment:
# the programs it starts do not write into the recording (they made it unreadable).
"$TP" run -q --library "$LIB" --record "$OUT/bash.csv" -- bash -c \
    "$PY -c 'import numpy' && $PY -c 'import numpy; print(1)' >/dev/null"
"$TP" replay "$OUT/bash.csv" --reps 1 >/dev/null
# Through a wrapper that execs the program (`env`, a `#!/usr/bin/env` script, as
# pyenv's shims are): the program is recorded, not the wrapper (it used to be).
printf '#!/usr/bin/env bash\nexec "$@"\n' >"$OUT/wrap.sh"
chmod +x "$OUT/wrap.sh"
for wrapper in env "$OUT/wrap.sh"; do
    "$TP" run -q --library "$LIB" --record "$OUT/wrapped.csv" -- "$wrapper" "$PY" -c "
import numpy as np
a = [np.ones(1000 * i) for i in range(1, 200)]
"
    test "$(wc -l <"$OUT/wrapped.csv")" -gt 1000
done
# A relative TENSORPOOL_RECORD through a wrapper that changes directory before its
# exec: the program's recording is the file the wrapper was asked for (it went to
# a new file in the other directory, and the asked-for one kept only a header).
mkdir -p "$OUT/wd" "$OUT/elsewhere"
rm -f "$OUT/wd/rel.csv" "$OUT/elsewhere/rel.csv"
(cd "$OUT/wd" && TENSORPOOL_RECORD=rel.csv LD_PRELOAD="$LIB" \
    sh -c "cd ../elsewhere && exec $ROOT/$PY -c 'import numpy'")
test "$(wc -l <"$OUT/wd/rel.csv")" -gt 1000
test ! -e "$OUT/elsewhere/rel.csv"
# A program that ends in _exit or on a signal leaves whole lines: the trace reads.
for how in "os._exit(0)" "os.kill(os.getpid(), 9)"; do
    "$TP" run -q --library "$LIB" --record "$OUT/cut.csv" -- "$PY" -c "
import os, numpy as np
a = [np.ones(100 * i) for i in range(1, 300)]
$how
" || true
    test "$(wc -l <"$OUT/cut.csv")" -gt 100
    "$TP" replay "$OUT/cut.csv" --reps 1 >/dev/null
done

echo "==> tensorpool run: the program's status, the summary"
set +e
"$TP" run --library "$LIB" -- sh -c 'exit 7'
status=$?
set -e
test "$status" = 7
out=$("$TP" run --library "$LIB" --stats -- python3 -c "print('ran')" 2>&1)
grep -q "summary of process" <<<"$out"
# A job manager's SIGTERM to the command reaches the program (it was left running).
"$TP" run --library "$LIB" -- python3 -c "import time; print('up', flush=True); time.sleep(30)" \
    >"$OUT/term.out" 2>&1 &
runner=$!
for _ in $(seq 100); do grep -q up "$OUT/term.out" && break; sleep 0.05; done
kill -TERM "$runner"
set +e
wait "$runner"
status=$?
set -e
test "$status" = 143
if pgrep -f "time.sleep\(30\)" >/dev/null; then
    echo "the program outlived the SIGTERM sent to tensorpool run" >&2
    exit 1
fi

echo "==> a config file and variables over the library's own defaults (16-byte classes)"
printf 'min_block_size = 16\nmemory_limit = "1 GiB"\n' >"$OUT/m16.toml"
out=$("$TP" run --library "$LIB" --config "$OUT/m16.toml" --stats -- "$PY" -c pass 2>&1)
grep -q "memory limit *1.00 GiB" <<<"$out"
# A bad alignment is passed over alone (it used to drop every other variable).
out=$(TENSORPOOL_STATS=1 TENSORPOOL_ALIGNMENT=3 TENSORPOOL_MEMORY_LIMIT=1GiB \
    LD_PRELOAD="$LIB" "$PY" -c pass 2>&1)
grep -q "TENSORPOOL_ALIGNMENT" <<<"$out"
grep -q "memory limit *1.00 GiB" <<<"$out"

echo "==> TENSORPOOL_STATS, and bad variables: reported, never fatal"
err=$(TENSORPOOL_STATS=1 TENSORPOOL_MEMORY_LIMT=1 TENSORPOOL_RELEASE_DELAY_MS=soon \
    LD_PRELOAD="$LIB" python3 -c "print('ran')" 2>&1)
for want in "ran" "TENSORPOOL_MEMORY_LIMT" "TENSORPOOL_RELEASE_DELAY_MS" "summary of process"; do
    if ! grep -q "$want" <<<"$err"; then
        echo "expected '$want' in: $err" >&2
        exit 1
    fi
done
# The summary goes to the standard error the program started with: also when the
# program closed it before exit (coreutils), never into a file that took its number.
err=$(TENSORPOOL_STATS=1 LD_PRELOAD="$LIB" ls / 2>&1 >/dev/null)
grep -q "summary of process" <<<"$err"
err=$(TENSORPOOL_STATS=1 LD_PRELOAD="$LIB" python3 -c "
import os
os.close(2)
fd = os.open('$OUT/fd2.txt', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(fd, b'payload\\n')" 2>&1)
grep -q "summary of process" <<<"$err"
test "$(cat "$OUT/fd2.txt")" = payload
# A program started without a standard error: the recording must not take its
# number (the shell passed it on as its commands' stderr, and their summaries went
# into the trace).
TENSORPOOL_STATS=1 TENSORPOOL_RECORD="$OUT/no2.csv" LD_PRELOAD="$LIB" sh -c 'python3 -c pass' 2>&-
if grep -a -q "summary" "$OUT/no2.csv"; then
    echo "the summary went into the recording" >&2
    exit 1
fi
"$TP" replay --reps 1 --no-touch "$OUT/no2.csv" >/dev/null
# A program that closes every descriptor it did not open, then opens a file of its
# own (a daemon, closefrom): the file took the recording's number and got the
# trace's lines. Now the recording stops, says so, and the file is the program's.
cat >"$OUT/closefrom.c" <<'C'
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int fd = 3; fd < 1024; fd++) close(fd);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (int i = 0; i < 100000; i++) free(malloc(4096));
    return write(fd, "the program's data\n", 19) != 19;
}
C
cc -O1 "$OUT/closefrom.c" -o "$OUT/closefrom"
err=$(TENSORPOOL_RECORD="$OUT/closefrom.csv" LD_PRELOAD="$LIB" "$OUT/closefrom" "$OUT/own.txt" 2>&1)
test "$(cat "$OUT/own.txt")" = "the program's data"
grep -q "the program closed the descriptor" <<<"$err"
# A refused free is not recorded: a double free (the second after its memory went
# back) was in the trace as the free of a block of 0 bytes.
cat >"$OUT/twice.c" <<'C'
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    char *p = malloc(3 << 20);
    p[0] = 1;
    printf("%p\n", (void *)p);
    free(p);
    malloc_trim(0);
    free(p);
    return 0;
}
C
cc -O0 -fno-builtin "$OUT/twice.c" -o "$OUT/twice"
addr=$(TENSORPOOL_RECORD="$OUT/twice.csv" LD_PRELOAD="$LIB" "$OUT/twice" 2>/dev/null)
test "$(grep -c "free,$addr," "$OUT/twice.csv")" = 1
"$TP" replay --reps 1 --no-touch "$OUT/twice.csv" >/dev/null
# Under a descriptor limit below 200, the summary still prints (its copy of stderr
# could not be made there, and nothing was printed).
err=$( (ulimit -n 64; TENSORPOOL_STATS=1 LD_PRELOAD="$LIB" ls / 2>&1 >/dev/null) )
grep -q "summary of process" <<<"$err"

echo "==> a limited address space (ulimit -v): smaller reservations, no failure"
# The 64 GiB reservation of an expandable segment is refused there; every
# allocation failed until a refused reservation was tried smaller.
err=$( (ulimit -v 4000000; TENSORPOOL_STATS=1 LD_PRELOAD="$LIB" "$PY" -c "
x = [bytes(i % 5000) for i in range(20000)]
y = bytearray(64 << 20)
print(len(x), len(y))") 2>&1)
for want in "20000 67108864" "OOMs 0"; do
    if ! grep -q "$want" <<<"$err"; then
        echo "expected '$want' in: $err" >&2
        exit 1
    fi
done
# And a reservation leaves the program room: under 1 GB, a first reservation took
# 512 MiB (the largest power of two that fit), and NumPy's 586 MiB array, which
# glibc serves there, failed. (Checked where glibc serves it under this limit.)
big="import numpy as np; a = [np.ones(1000) for _ in range(100)]; print(np.ones(76_800_000).nbytes)"
if (ulimit -v 1000000; "$PY" -c "$big") >/dev/null 2>&1; then
    test "$( (ulimit -v 1000000; LD_PRELOAD="$LIB" "$PY" -c "$big") )" = 614400000
fi
echo "preload tests passed"
