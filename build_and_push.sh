#!/usr/bin/env bash
# Build the training and serving images (or the one named), tag them latest and with the git commit, and push
# them to Amazon ECR (creating the repositories when missing) or to any registry.
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
source "$root/docker/common.sh"

usage() {
  cat <<'EOF'
Usage: ./build_and_push.sh [options] [train|serve]...

Builds wav2vec2-train and wav2vec2-serve (or those named) from docker/Dockerfile with BuildKit, tags each
IMAGE:latest and IMAGE:<git commit>, then pushes them.

Where to:
  (default)              Amazon ECR: ACCOUNT.dkr.ecr.REGION.amazonaws.com/wav2vec2-{train,serve}; creates the
                         repositories when missing and logs in with `aws ecr get-login-password`
  --local                build and tag only; no AWS call, no push
  --registry HOST[:PORT] push to this registry instead (no AWS call; `docker login HOST` first if it needs it)
AWS (ECR only; otherwise from AWS_PROFILE, AWS_REGION/AWS_DEFAULT_REGION or `aws configure`):
  --region REGION        e.g. us-east-1
  --account ID           12-digit account id (default: aws sts get-caller-identity)
  --profile NAME         AWS CLI profile
Build:
  --base-image IMAGE     base image (default nvidia/cuda:12.8.1-base-ubuntu24.04; any Debian/Ubuntu with
                         Python >= 3.11, e.g. local/debian:bookworm from docker/make-base.sh)
  --torch REQUIREMENT    torch pip requirement (default torch==2.10.0, PyPI's CUDA 12.8 wheel)
  --wheels DIR           extra *.whl files pip may use (e.g. a CPU torch wheel with --torch torch==X+cpu)
  --ca-bundle FILE       extra CA bundle for a TLS-intercepting proxy, given to the build as a BuildKit
                         secret and never stored in the image (default: $CA_BUNDLE)
  --tag TAG              the second tag (default: the git commit, with -dirty for local changes)
  --prefix NAME          repository/image name prefix (default wav2vec2)
Other:
  --dry-run              print the commands instead of running them
  -h, --help             this help
Environment: DOCKER (docker client to use).
EOF
}

die() { printf 'build_and_push: %s\n' "$*" >&2; exit 1; }

targets=() mode=ecr registry="" region="" account="" profile="" dry=false
base_image=nvidia/cuda:12.8.1-base-ubuntu24.04 torch=torch==2.10.0 wheels="" ca=${CA_BUNDLE:-}
tag="" prefix=wav2vec2
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --local) mode=local ;;
    --registry) mode=registry; registry=${2:?--registry needs HOST[:PORT]}; shift ;;
    --region) region=${2:?--region needs a value}; shift ;;
    --account) account=${2:?--account needs a value}; shift ;;
    --profile) profile=${2:?--profile needs a value}; shift ;;
    --base-image) base_image=${2:?--base-image needs a value}; shift ;;
    --torch) torch=${2:?--torch needs a value}; shift ;;
    --wheels) wheels=${2:?--wheels needs a directory}; shift ;;
    --ca-bundle) ca=${2:?--ca-bundle needs a file}; shift ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --prefix) prefix=${2:?--prefix needs a value}; shift ;;
    --dry-run) dry=true ;;
    train|serve) targets+=("$1") ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
((${#targets[@]})) || targets=(train serve)
[ -n "$tag" ] || tag=$(git_tag "$root")
[ -z "$ca" ] || [ -r "$ca" ] || die "CA bundle $ca is not a readable file"
[ -z "$wheels" ] || [ -d "$wheels" ] || die "wheels directory $wheels does not exist"

# Print a command as the shell would read it, then run it unless this is a dry run.
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  $dry || "$@"
}

# --- docker ---------------------------------------------------------------------------------------------
if $dry; then
  docker=${DOCKER:-docker}
else
  docker=$(pick_docker) || die "no docker client that builds with BuildKit was found: install Docker (with its buildx plugin for Docker >= 23), or run docker/ensure-engine.sh as root"
  problem=$(docker_problem "$docker")
  [ -z "$problem" ] || die "$problem (as root, docker/ensure-engine.sh starts it)"
fi

# --- AWS (ECR only) -------------------------------------------------------------------------------------
aws=(aws)
if [ "$mode" = ecr ]; then
  [ -z "$profile" ] || aws+=(--profile "$profile")
  if ! command -v aws >/dev/null 2>&1; then
    $dry || die "the aws CLI is not installed (https://aws.amazon.com/cli/); use --local or --registry to build without AWS"
  fi
  if [ -z "$region" ]; then
    region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
    [ -n "$region" ] || ! command -v aws >/dev/null 2>&1 || region=$("${aws[@]}" configure get region 2>/dev/null || true)
    [ -n "$region" ] || die "no AWS region: pass --region, set AWS_REGION or run aws configure"
  fi
  if [ -z "$account" ]; then
    if $dry; then
      account='<account>'
      echo "+ ${aws[*]} sts get-caller-identity --query Account --output text  # gives <account>"
    else
      account=$("${aws[@]}" sts get-caller-identity --query Account --output text 2>/tmp/build_and_push.$$.err) \
        || { err=$(cat /tmp/build_and_push.$$.err); rm -f /tmp/build_and_push.$$.err
             die "not logged in to AWS (aws sts get-caller-identity: ${err:-failed}); run aws configure or aws sso login${profile:+ --profile $profile}"; }
      rm -f /tmp/build_and_push.$$.err
    fi
  fi
  suffix=amazonaws.com; [[ $region == cn-* ]] && suffix=amazonaws.com.cn
  registry=$account.dkr.ecr.$region.$suffix
fi

# --- build ----------------------------------------------------------------------------------------------
build_args=(--build-arg "BASE_IMAGE=$base_image" --build-arg "TORCH_REQUIREMENT=$torch" --build-arg "GIT_COMMIT=$tag")
if [ -n "$wheels" ]; then
  # The wheels reach the build as an image (this Docker may predate --build-context); re-made only when
  # the set of files changes, so the torch layer stays cached.
  wheels_image=$prefix-wheels:local
  compgen -G "$wheels/*.whl" >/dev/null || die "no *.whl files in $wheels"
  sum=$(cd "$wheels" && find . -maxdepth 1 -name '*.whl' -printf '%f %s %T@\n' | sort | sha256sum | cut -c1-16)
  if $dry || [ "$("$docker" image inspect -f '{{index .Config.Labels "wheels.sum"}}' "$wheels_image" 2>/dev/null)" != "$sum" ]; then
    printf '+ (cd %q \&\& tar -c -- *.whl) | %q import --change %q - %q\n' "$wheels" "$docker" "LABEL wheels.sum=$sum" "$wheels_image"
    $dry || (cd "$wheels" && tar -c -- *.whl) | "$docker" import --change "LABEL wheels.sum=$sum" - "$wheels_image" >/dev/null
  fi
  build_args+=(--build-arg "WHEELS_IMAGE=$wheels_image")
fi
[ -z "$ca" ] || build_args+=(--secret "id=ca,src=$ca")

for t in "${targets[@]}"; do
  image=$prefix-$t
  start=$SECONDS
  run env DOCKER_BUILDKIT=1 "$docker" build --progress=plain -f "$root/docker/Dockerfile" --target "$t" \
    "${build_args[@]}" -t "$image:latest" -t "$image:$tag" "$root" \
    || die "building $image failed (see above); without registry access, build on a local base: docker/make-base.sh && $0 --base-image local/debian:bookworm ...; behind a TLS-intercepting proxy add --ca-bundle FILE"
  if ! $dry; then
    echo "[build] $image:$tag built in $((SECONDS - start)) s," \
      "$(("$("$docker" image inspect -f '{{.Size}}' "$image:latest")" / 1000000)) MB uncompressed"
  fi
done
[ "$mode" != local ] || exit 0

# --- push -----------------------------------------------------------------------------------------------
if [ "$mode" = ecr ]; then
  for t in "${targets[@]}"; do
    repo=$prefix-$t
    if $dry; then
      echo "+ ${aws[*]} ecr describe-repositories --region $region --repository-names $repo || ${aws[*]} ecr create-repository --region $region --repository-name $repo --image-scanning-configuration scanOnPush=true"
    elif ! "${aws[@]}" ecr describe-repositories --region "$region" --repository-names "$repo" >/dev/null 2>&1; then
      run "${aws[@]}" ecr create-repository --region "$region" --repository-name "$repo" \
        --image-scanning-configuration scanOnPush=true >/dev/null
    fi
  done
  echo "+ ${aws[*]} ecr get-login-password --region $region | $docker login --username AWS --password-stdin $registry"
  if ! $dry; then
    "${aws[@]}" ecr get-login-password --region "$region" | "$docker" login --username AWS --password-stdin "$registry" >/dev/null \
      || die "docker login to $registry failed (is your AWS identity allowed ecr:GetAuthorizationToken?)"
  fi
fi

for t in "${targets[@]}"; do
  image=$prefix-$t
  for v in latest "$tag"; do
    run "$docker" tag "$image:$v" "$registry/$image:$v"
    printf '+ %q push %q\n' "$docker" "$registry/$image:$v"
    if ! $dry && ! out=$("$docker" push "$registry/$image:$v" 2>&1); then
      printf '%s\n' "$out" >&2
      if grep -qiE 'unauthorized|no basic auth|authentication required|denied' <<<"$out"; then
        die "push to $registry refused: not logged in or not allowed (docker login $registry)"
      fi
      die "push of $registry/$image:$v failed"
    fi
    $dry || echo "[push] $registry/$image:$v"
  done
done
