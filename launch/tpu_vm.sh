#!/usr/bin/env bash
# A Cloud TPU VM slice through `gcloud compute tpus tpu-vm`: create it, install this
# checkout on every worker, run the same jaxdistill command on all workers at once (JAX
# finds the other workers through the VM metadata), follow the log, delete it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] COMMAND [-- ARGS...]

Commands:
  create    gcloud compute tpus tpu-vm create NAME (--accelerator-type, --version)
  install   copy this checkout (git archive HEAD) to every worker; make a venv with
            jaxdistill and jax[tpu] there
  mount     mount --bucket at ~/BUCKET on every worker with gcsfuse (a shared workdir)
  run       start `python -m jaxdistill.main ARGS...` on every worker (--worker=all), in
            the background, output in ~/jaxdistill.log on each worker
  logs      follow worker 0's log (process 0 prints progress and the report)
  delete    delete the TPU VM
  all       create, install, (mount, with --bucket), run, logs

Options:
  --name NAME               TPU VM name (default jaxdistill)
  --zone ZONE               zone (default us-central2-b)
  --accelerator-type TYPE   slice (default v4-32: 4 workers x 4 chips)
  --version VERSION         TPU software version (default tpu-ubuntu2204-base)
  --project PROJECT         GCP project (default: gcloud's)
  --bucket BUCKET           a GCS bucket to mount on every worker as ~/BUCKET
  --dry-run                 print the exact commands and exit
  -h, --help                this help

The workdir must be shared by all workers, since Orbax writes one checkpoint from every
host: a bucket mounted on every worker (mount) or an NFS share (see docs/scaling.md).

Example:
  launch/tpu_vm.sh --name kd --accelerator-type v4-32 --bucket my-bucket all -- \
      --config=configs/imagenet_resnet.py --workdir=/home/\$USER/my-bucket/kd \
      --config.mesh.data=1 --config.mesh.fsdp=-1
EOF
}

name=jaxdistill
zone=us-central2-b
accelerator=v4-32
version=tpu-ubuntu2204-base
project=""
bucket=""
dry_run=0
command=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator-type) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --bucket) bucket="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [[ -z "$command" ]]; then command="$1"; shift; else
         echo "error: unexpected argument $1: put the jaxdistill arguments after --" >&2
         exit 2
       fi ;;
  esac
done
case "$command" in
  create|install|mount|run|logs|delete|all) ;;
  "") echo "error: give a command: create, install, mount, run, logs, delete or all" \
           "(see --help)" >&2
      exit 2 ;;
  *) echo "error: unknown command $command: use create, install, mount, run, logs, delete" \
          "or all" >&2
     exit 2 ;;
esac
if [[ "$command" == mount && -z "$bucket" ]]; then
  echo "error: mount needs --bucket BUCKET (a GCS bucket every worker can read and write)" >&2
  exit 2
fi
if [[ ( "$command" == run || "$command" == all ) && $# -eq 0 ]]; then
  echo "error: $command needs the jaxdistill arguments after --, e.g." \
       "-- --config=configs/digits.py --workdir=gs://BUCKET/run" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tarball="/tmp/jaxdistill-$name.tar.gz"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
if [[ -n "$project" ]]; then where+=("--project=$project"); fi

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # quote, host_memory_env

step() {  # print the command; run it unless --dry-run
  quote "$@"
  if [[ "$dry_run" == 0 ]]; then "$@"; fi
}

do_create() {
  step "${gcloud_tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accelerator" \
    "--version=$version"
}

do_install() {
  step git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
  step "${gcloud_tpu[@]}" scp "$tarball" "$name:jaxdistill.tar.gz" "${where[@]}" --worker=all
  # jax[tpu] in the range pyproject.toml pins; libtpu comes with it.
  step "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="set -e; \
rm -rf ~/jaxdistill && mkdir -p ~/jaxdistill && tar -xzf ~/jaxdistill.tar.gz -C ~/jaxdistill && \
python3 -m venv ~/jaxdistill/.venv && ~/jaxdistill/.venv/bin/pip install -q -e ~/jaxdistill \
'jax[tpu]>=0.10.2,<0.11'"
}

do_mount() {
  # gcsfuse from Google's apt repository (the install steps of the gcsfuse docs).
  step "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="set -e; \
repo=gcsfuse-\$(lsb_release -c -s); \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] \
https://packages.cloud.google.com/apt \$repo main\" | \
sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | \
sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null; \
sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; \
mkdir -p ~/$bucket && gcsfuse --implicit-dirs $bucket ~/$bucket"
}

do_run() {
  local args tunables
  args="$(printf '%q ' "$@")"
  # TPUs keep their allocator unless the arguments ask for --host_memory=reuse.
  tunables="$(GLIBC_TUNABLES='' host_memory_env tpu "$@")"
  step "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="cd ~/jaxdistill && \
${tunables:+$(printf '%q ' "$tunables")}nohup .venv/bin/python -m jaxdistill.main ${args% } \
> ~/jaxdistill.log 2>&1 < /dev/null &"
}

do_logs() {
  step "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=0 \
    --command="tail -n +1 -f ~/jaxdistill.log"
}

do_delete() {
  step "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet
}

case "$command" in
  create) do_create ;;
  install) do_install ;;
  mount) do_mount ;;
  run) do_run "$@" ;;
  logs) do_logs ;;
  delete) do_delete ;;
  all) do_create; do_install; if [[ -n "$bucket" ]]; then do_mount; fi
       do_run "$@"; do_logs ;;
esac
