#!/usr/bin/env bash
# Run every study at --scale gpu, spread over the visible GPUs with WORKERS_PER_GPU job processes per GPU (default 4:
# the studies' small models leave a GPU mostly idle with one process), and stop within SECONDS (default 540: under
# the device's 10-minute limit per command).
#
#   WORKERS_PER_GPU=4 bash experiments/run_gpu.sh [SECONDS]
#
# Each worker runs the studies in order (1, 6, then 2, 3, 4, 5: study 1's jobs first, then the Vim study's),
# skipping jobs another worker holds (a lock per job), then a second pass waits for those and summarises. No job
# starts that cannot end before the deadline (EXPERIMENTS_JOB_SECONDS: 90 s per job with one worker per GPU, 150 s
# with several); a job cut by the hard timeout resumes from its last checkpoint. Data loader processes per job:
# the cores over the job processes, minus one (EXPERIMENTS_DATA_WORKERS overrides). Finished jobs are recorded in
# docs/results/jobs/*.json (they travel with the working tree) and are skipped by the next call; pretraining
# checkpoints live in runs/experiments/gpu (kept only while the same machine is used). Results: docs/results/
# (JSON + PNG per study) and docs/results.md; archived to $OUT/experiments.tgz when $OUT is set.
set -u
BUDGET=${1:-540}
WPG=${WORKERS_PER_GPU:-4}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src
START=$(date +%s)
DEADLINE=$((START + BUDGET - 45))           # the last 45 s: hard-timeout margin and the summaries
STUDIES="study1_pretraining study6_vim study2_unit study3_order study4_target study5_length"
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -lt 1 ]; then echo "run_gpu.sh: no GPU visible" >&2; exit 2; fi
if ! [ "$WPG" -ge 1 ] 2>/dev/null; then echo "run_gpu.sh: WORKERS_PER_GPU must be a whole number >= 1" >&2; exit 2; fi
PROCS=$((NGPU * WPG))
DW=$(( $(nproc) / PROCS - 1 )); [ "$DW" -ge 1 ] || DW=1
export EXPERIMENTS_DATA_WORKERS=${EXPERIMENTS_DATA_WORKERS:-$DW}
if [ "$WPG" -gt 1 ]; then export EXPERIMENTS_JOB_SECONDS=${EXPERIMENTS_JOB_SECONDS:-150}; fi
LOGS=runs/experiments/gpu/logs
mkdir -p "$LOGS" docs/results/jobs runs/experiments/gpu/jobs_backup
# finished jobs of an earlier call on this machine (runs/ is ignored by git, so it survives a working-tree refresh)
cp -n runs/experiments/gpu/jobs_backup/*.json docs/results/jobs/ 2>/dev/null || true
echo "run_gpu.sh: $NGPU GPU(s) x $WPG worker(s), $EXPERIMENTS_DATA_WORKERS data workers each, budget ${BUDGET}s," \
     "$(ls docs/results/jobs | wc -l) jobs done before, logs in $LOGS"
left() { echo $((DEADLINE + 25 - $(date +%s))); }
for ((g = 0; g < NGPU; g++)); do
  for ((w = 0; w < WPG; w++)); do
    (
      export CUDA_VISIBLE_DEVICES=$g
      sleep $((w * 2))                       # staggered: each worker takes the next job not yet locked
      for pass in "" "--wait"; do
        for s in $STUDIES; do
          [ "$(left)" -gt 5 ] || break
          timeout -s INT -k 10 "$(left)" python experiments/$s.py --scale gpu --deadline "$DEADLINE" $pass
        done
      done
    ) > "$LOGS/gpu$g.w$w.log" 2>&1 &
  done
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
