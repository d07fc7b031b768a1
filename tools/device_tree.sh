#!/usr/bin/env bash
# The device tool copies the working tree (tracked files, and untracked ones git does not ignore) and refuses
# one over 64 MiB; results/ (the published checkpoints and reports, ~340 MiB) is not read by any device step.
#
#   bash tools/device_tree.sh slim      # before run(...): HEAD becomes a detached commit without results/
#                                       # (the files stay on disk, ignored), so ~3 MiB travel
#   bash tools/device_tree.sh restore   # after: back on the branch, results/ tracked again, no file touched
#   bash tools/device_tree.sh size      # MiB that would travel now (tracked + untracked-not-ignored)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
EXCLUDE=$(git rev-parse --git-path info/exclude)
STATE=$(git rev-parse --git-path device-tree-branch)
MARK="/results/"  # with the line above it, "# tools/device_tree.sh slim" (gitignore has no trailing comments)
NOTE="# tools/device_tree.sh slim"

size() {
    { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- 2>/dev/null \
        | tail -n 1 | awk '{printf "%.1f MiB would travel (the limit is 64 MiB)\n", $1 / 1048576}'
}

case "${1:-}" in
slim)
    [ ! -e "$STATE" ] || { echo "already slim (run: bash tools/device_tree.sh restore)"; exit 1; }
    [ -z "$(git status --porcelain --untracked-files=no)" ] || { echo "commit or stash your changes first"; exit 1; }
    branch=$(git symbolic-ref --short -q HEAD) || { echo "check out a branch first (HEAD is detached)"; exit 1; }
    echo "$branch" >"$STATE"
    git checkout -q --detach
    mkdir -p "$(dirname "$EXCLUDE")" && printf '%s\n%s\n' "$NOTE" "$MARK" >>"$EXCLUDE"
    git rm -r -q --cached results
    git -c user.name="device call" -c user.email=device@localhost commit -q -m "device call: results/ left out (tools/device_tree.sh)"
    echo "slim: on a detached commit without results/ (back with: bash tools/device_tree.sh restore)"
    size
    ;;
restore)
    [ -e "$STATE" ] || { echo "not slim: nothing to restore"; exit 1; }
    # back onto the branch by moving HEAD and the index only: the files on disk (results/ included, with any
    # edit made meanwhile) stay as they are; the detached commit differs from the branch in results/ alone
    git symbolic-ref HEAD "refs/heads/$(cat "$STATE")"
    git reset -q
    grep -vxF -e "$MARK" -e "$NOTE" "$EXCLUDE" >"$EXCLUDE.tmp" || true
    mv "$EXCLUDE.tmp" "$EXCLUDE"
    rm -f "$STATE"
    echo "restored: on $(git symbolic-ref --short HEAD), results/ tracked"
    git status --short | head -n 5
    ;;
size) size ;;
*) echo "usage: bash tools/device_tree.sh slim|restore|size"; exit 2 ;;
esac
