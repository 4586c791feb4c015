#!/usr/bin/env bash
# A SLURM batch job over GPU nodes with one jaxdistill process per GPU: `srun` starts
# NODES x GPUS processes and sets SLURM_* in each, from which jax.distributed.initialize
# finds the coordinator (the first node), the process count and this process's id, and
# gives each process the GPU of its local rank.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm_gpu.sh [options] -- ARGS...

Writes a batch script that runs `srun python -m jaxdistill.main ARGS...` with one task
per GPU, and submits it with sbatch. Run it from the repository root on the login node;
the checkout (with its .venv) and the workdir must be on a filesystem every node mounts.

Options:
  --nodes N             nodes (default 2)
  --gpus-per-node G     GPUs per node = processes per node (default 8)
  --cpus-per-task C     CPU cores per process, for the input pipeline (default 8)
  --time HH:MM:SS       wall-clock limit (default 24:00:00)
  --partition P         partition (default: the cluster's)
  --account A           account (default: yours)
  --job-name NAME       job name (default jaxdistill)
  --python PY           interpreter on the nodes (default: ROOT/.venv/bin/python)
  --script FILE         where to write the batch script (default: ROOT/launch/logs/NAME.sbatch)
  --dry-run             print the batch script and the sbatch command, submit nothing
  -h, --help            this help

Example (2 nodes x 8 GPUs, teacher FSDP over all 16 GPUs, student data-parallel):
  launch/slurm_gpu.sh --nodes 2 --gpus-per-node 8 -- --config=configs/imagenet_resnet.py \
      --workdir=/shared/kd --config.mesh.data=1 --config.mesh.fsdp=-1 \
      "--config.student.sharding_rules=()"
EOF
}

nodes=2
gpus=8
cpus=8
time_limit=24:00:00
partition=""
account=""
job_name=jaxdistill
python=""
script=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --cpus-per-task) cpus="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --account) account="$2"; shift 2 ;;
    --job-name) job_name="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --script) script="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (see --help); jaxdistill arguments go after --" >&2
       exit 2 ;;
  esac
done
for pair in "nodes=$nodes" "gpus-per-node=$gpus" "cpus-per-task=$cpus"; do
  if [[ ! "${pair#*=}" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --$pair must be a positive integer" >&2
    exit 2
  fi
done
if [[ $# -eq 0 ]]; then
  echo "error: give the jaxdistill arguments after --, e.g." \
       "-- --config=configs/digits.py --workdir=/shared/run" >&2
  exit 2
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # quote, host_memory_env

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${python:-$root/.venv/bin/python}"
logs="$root/launch/logs"
script="${script:-$logs/$job_name.sbatch}"

batch_script() {
  echo "#!/usr/bin/env bash"
  echo "#SBATCH --job-name=$job_name"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=$gpus"
  echo "#SBATCH --gpus-per-node=$gpus"
  echo "#SBATCH --cpus-per-task=$cpus"
  echo "#SBATCH --time=$time_limit"
  echo "#SBATCH --output=$logs/%x-%j.out"
  if [[ -n "$partition" ]]; then echo "#SBATCH --partition=$partition"; fi
  if [[ -n "$account" ]]; then echo "#SBATCH --account=$account"; fi
  echo "set -euo pipefail"
  echo "cd $(quote "$root")"
  # GPUs keep their allocator unless the arguments ask for --host_memory=reuse.
  local tunables
  tunables="$(host_memory_env gpu "$@")"
  if [[ -n "$tunables" ]]; then echo "export $(quote "$tunables")"; fi
  # One task per GPU; JAX reads SLURM_* (see jaxdistill/runtime/distributed.py). Every task
  # prints, but only process 0 writes progress, reports and the config.
  echo "srun --kill-on-bad-exit=1 $(quote "$python" -m jaxdistill.main "$@")"
}

if [[ "$dry_run" == 1 ]]; then
  echo "# $script"
  batch_script "$@"
  echo "# submit:"
  quote sbatch "$script"
  exit 0
fi
mkdir -p "$logs" "$(dirname "$script")"
batch_script "$@" > "$script"
quote sbatch "$script"
sbatch "$script"
