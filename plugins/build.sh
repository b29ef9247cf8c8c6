#!/usr/bin/env bash
# Build every example plugin: plugins/NAME/NAME.zig -> plugins/build/NAME.wasm (+ NAME.yaml beside it).
#
# Uses Zig from PyPI's `ziglang` package inside the project venv (make install puts it there).
# A plugin is rebuilt only when its source, its manifest or the SDK is newer than its .wasm.
# Environment: PYTHON (default .venv/bin/python), PLUGINS_OUT (default plugins/build),
# PLUGINS_FORCE=1 to rebuild everything.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out="${PLUGINS_OUT:-$here/build}"
sdk="$here/sdk/helios.zig"
force="${PLUGINS_FORCE:-0}"

if ! "$python" -m ziglang version >/dev/null 2>&1; then
    echo "plugins/build.sh: zig not found: '$python -m ziglang' failed (run 'make install' first)" >&2
    exit 1
fi

mkdir -p "$out"
# Zig's caches stay inside the build directory (git-ignored), not in the user's home.
cache="$out/.zig-cache"

built=0
found=0
for dir in "$here"/*/; do
    name="$(basename "$dir")"
    src="$dir$name.zig"
    manifest="$dir$name.yaml"
    [ -f "$src" ] || continue
    found=$((found + 1))
    if [ ! -f "$manifest" ]; then
        echo "plugins/build.sh: $name: missing manifest $manifest" >&2
        exit 1
    fi
    wasm="$out/$name.wasm"
    if [ "$force" = "1" ] || [ ! -f "$wasm" ] || [ "$src" -nt "$wasm" ] || [ "$sdk" -nt "$wasm" ]; then
        echo "plugins/build.sh: building $name"
        mkdir -p "$cache"
        tmp="$cache/tmp-$name.wasm"  # outside the scanned dir: a watcher never sees half a module
        if ! "$python" -m ziglang build-exe \
            -target wasm32-freestanding -fno-entry -rdynamic -O ReleaseSmall --stack 65536 \
            --cache-dir "$cache" --global-cache-dir "$cache" \
            --dep helios -Mroot="$src" -Mhelios="$sdk" \
            -femit-bin="$tmp"; then
            rm -f "$tmp"
            echo "plugins/build.sh: FAILED to build plugin '$name' from $src" >&2
            exit 1
        fi
        mv -f "$tmp" "$wasm"
        built=$((built + 1))
    fi
    cmp -s "$manifest" "$out/$name.yaml" || cp -f "$manifest" "$out/$name.yaml"
done

if [ "$found" -eq 0 ]; then
    echo "plugins/build.sh: no plugins found under $here" >&2
    exit 1
fi
echo "plugins/build.sh: $built built, $((found - built)) up to date, output in $out"
