#!/usr/bin/env bash
# Run every study at --scale gpu, spread over the visible GPUs (one worker process per GPU, each with its own
# CUDA_VISIBLE_DEVICES), and stop within SECONDS (default 540: under the device's 10-minute limit per command).
#
#   bash experiments/run_gpu.sh [SECONDS]
#
# Each worker runs the studies in order (1 first, then 2, 3, 4, 5), skipping jobs another worker holds, then a
# second pass waits for those and summarises. No job starts that cannot end before the deadline (90 s per job
# assumed); a job cut by the hard timeout resumes from its last checkpoint. Finished jobs are recorded in
# docs/results/jobs/*.json (they travel with the working tree) and are skipped by the next call; pretraining
# checkpoints live in runs/experiments/gpu (kept only while the same machine is used). Results: docs/results/
# (JSON + PNG per study) and docs/results.md; archived to $OUT/experiments.tgz when $OUT is set.
set -u
BUDGET=${1:-540}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src
START=$(date +%s)
DEADLINE=$((START + BUDGET - 45))           # the last 45 s: hard-timeout margin and the summaries
STUDIES="study1_pretraining study2_unit study3_order study4_target study5_length"
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -lt 1 ]; then echo "run_gpu.sh: no GPU visible" >&2; exit 2; fi
LOGS=runs/experiments/gpu/logs
mkdir -p "$LOGS" docs/results/jobs runs/experiments/gpu/jobs_backup
# finished jobs of an earlier call on this machine (runs/ is ignored by git, so it survives a working-tree refresh)
cp -n runs/experiments/gpu/jobs_backup/*.json docs/results/jobs/ 2>/dev/null || true
echo "run_gpu.sh: $NGPU GPU(s), budget ${BUDGET}s, logs in $LOGS"
left() { echo $((DEADLINE + 25 - $(date +%s))); }
for ((g = 0; g < NGPU; g++)); do
  (
    export CUDA_VISIBLE_DEVICES=$g
    for pass in "" "--wait"; do
      for s in $STUDIES; do
        [ "$(left)" -gt 5 ] || break
        timeout -s INT -k 10 "$(left)" python experiments/$s.py --scale gpu --deadline "$DEADLINE" $pass
      done
    done
  ) > "$LOGS/gpu$g.log" 2>&1 &
done
wait
# summaries of whatever finished (no job starts: the deadline has passed)
for s in $STUDIES; do
  CUDA_VISIBLE_DEVICES= python experiments/$s.py --scale gpu --deadline 0 > "$LOGS/summary_$s.log" 2>&1
  cat "$LOGS/summary_$s.log" | grep '^|'
done
CUDA_VISIBLE_DEVICES= python experiments/visualize_grid.py --scale gpu > "$LOGS/visualize_grid.log" 2>&1
python experiments/make_results_md.py
cp docs/results/jobs/*.json runs/experiments/gpu/jobs_backup/ 2>/dev/null || true
echo "run_gpu.sh: done in $(( $(date +%s) - START )) s; jobs finished: $(ls docs/results/jobs | wc -l)"
if [ -n "${OUT:-}" ]; then
  # one archive: the device tool returns at most 8 files
  tar czf "$OUT/experiments.tgz" docs/results docs/results.md "$LOGS"
fi
