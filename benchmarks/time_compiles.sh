#!/usr/bin/env bash
# Compile seconds and programs per sweep before and after issue 22, on the same (idle!) machine, run for run:
# the README's main job (configs/demo.toml of the BEFORE checkout, packaged model) and the distilled L6 sweep
# of the README's sweep table (64 TFC1 pairs, path_to_score + attribution head_by_pos_z), each a fresh process
# with the persistent compilation cache off.
#
#     bash benchmarks/time_compiles.sh [BEFORE [AFTER]]     # default: 1df8c7f (issue 22 filed) and HEAD
#
# Writes benchmarks/results/programs_{demo,l6}_{before,after}_idle_cpu.json (programs per family, bucket and
# stage; compile seconds; compile share of the wall). Takes about 15-25 minutes on 2 idle cores; measure alone.
set -eu
cd "$(dirname "$0")/.."
REPO=$PWD
BEFORE=${1:-1df8c7f}
AFTER=${2:-HEAD}
PY="${PYTHON:-python}"
export JAXMECH_SHARED_DATA="${JAXMECH_SHARED_DATA:-$REPO/../shared/data/msmarco-diagnostic}"  # worktrees live in /tmp
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/before" >/dev/null 2>&1; git worktree remove --force "$tmp/after" >/dev/null 2>&1; rm -rf "$tmp"' EXIT
git worktree add --detach "$tmp/before" "$BEFORE" >/dev/null
git worktree add --detach "$tmp/after" "$AFTER" >/dev/null
for which in before after; do
  for what in demo l6; do
    echo "== $what, $which ($(git -C "$tmp/$which" rev-parse --short HEAD))"
    (cd "$tmp/$which" && PYTHONPATH="$tmp/$which" "$PY" "$REPO/benchmarks/count_programs.py" "$what" \
        --root "$tmp/$which" --label "${what}_${which}_idle" \
        --out "$REPO/benchmarks/results/programs_${what}_${which}_idle_cpu.json" 2>&1 | tail -n 4)
  done
done
