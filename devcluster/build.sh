#!/usr/bin/env bash
# Builds (or reuses) the devcluster's binaries from their Go modules with the machine's Go:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm.
#
# Binaries live in a cache directory keyed by the hash of versions.env, this script and its templates, so a
# fresh clone on the same machine reuses them and a version change rebuilds. `.devcluster/bin` in the repo
# is a symlink to that directory. Only missing binaries are built.
#
# Environment: CANARIA_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/canaria) moves the cache.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
# shellcheck source=versions.env
source "$HERE/versions.env"

# Never let Go fetch a newer toolchain by itself: only package registries are reachable.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -mod=mod"

PROGRESS_EVERY=5
START_ALL=$SECONDS

die() { # one line: what failed and what to do about it
	echo "devcluster/build.sh: error: $*" >&2
	exit 1
}

say() { echo "[build] $*"; }

elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

check_go() {
	command -v go >/dev/null ||
		die "Go not found on PATH; install Go >= ${GO_MIN_VERSION} (e.g. the Debian package golang-go, if new enough)"
	local have
	have="$(go env GOVERSION)"
	have="${have#go}"
	if [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n1)" != "$GO_MIN_VERSION" ]; then
		die "Go ${have} is too old; the pinned modules need Go >= ${GO_MIN_VERSION}: install a newer Go"
	fi
}

cache_key() {
	cat "$HERE/versions.env" "$HERE/build.sh" "$HERE"/templates/* | sha256sum | cut -c1-16
}

# Runs "$@" in the background with output to $log, printing a progress line every few seconds: the label,
# the elapsed time and a count from the log ($unit: "packages" compiled by `go build -v`, or "modules"
# downloaded by `go get`), out of $total when known.
run_with_progress() {
	local label="$1" log="$2" unit="$3" total="$4"
	shift 4
	local start=$SECONDS next=$((SECONDS + PROGRESS_EVERY)) pid count
	"$@" >>"$log" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		((SECONDS >= next)) || continue
		next=$((SECONDS + PROGRESS_EVERY))
		if [ "$unit" = modules ]; then
			count="$(grep -c '^go: downloading' "$log" || true)"
		else
			count="$(grep -cv -e '^go: ' -e '^#' "$log" || true)"
		fi
		say "$label: $(elapsed $((SECONDS - start))) elapsed, ${count}${total:+/${total}} $unit${total:+ compiled}"
	done
	wait "$pid"
}

# Maps a failed Go command's log to one actionable line.
fail_from_log() {
	local what="$1" log="$2"
	if grep -q 'requires go >=' "$log"; then
		die "$what needs a newer Go ($(grep -m1 -o 'requires go >= [0-9.]*' "$log")); install it. Log: $log"
	elif grep -qE 'dial tcp|i/o timeout|no such host|connection refused|TLS handshake|404 Not Found|410 Gone|unknown revision|invalid version' "$log"; then
		die "$what: module download failed (network or proxy; GOPROXY=$(go env GOPROXY)); see $log"
	fi
	die "$what failed; see $log"
}

fail_download() {
	local what="$1" log="$2"
	grep -q 'requires go >=' "$log" && fail_from_log "downloading modules for $what" "$log"
	die "module download failed for $what: check access to the Go module proxy (GOPROXY=$(go env GOPROXY)) and the versions in devcluster/versions.env; see $log"
}

# Creates the wrapper module in $1 once: go.mod from $2 (a function that writes it), then `go get` of $3...
prepare_module() {
	local dir="$1" write_go_mod="$2"
	shift 2
	[ -f "$dir/.prepared" ] && return 0
	rm -rf "$dir"
	mkdir -p "$dir"
	"$write_go_mod" "$dir"
	local log="$LOGS/$(basename "$dir")-download.log"
	: >"$log"
	say "$(basename "$dir"): downloading modules ($*)"
	(cd "$dir" && run_with_progress "$(basename "$dir") download" "$log" modules "" go get "$@") ||
		fail_download "$(basename "$dir")" "$log"
	touch "$dir/.prepared"
}

# Builds package $3 of wrapper module $2 into $BIN/$1 with extra ldflags $4.
build_binary() {
	local name="$1" dir="$2" pkg="$3" ldflags="${4:-}"
	if [ -x "$BIN/$name" ]; then
		say "$name: cached"
		return 0
	fi
	local log="$LOGS/$name.log" start=$SECONDS total
	: >"$log"
	total="$(cd "$dir" && go list -deps "$pkg" 2>>"$log" | wc -l)" || total=""
	say "$name: building $pkg${total:+ (${total} packages; those already in the Go build cache are not counted)}"
	(cd "$dir" && run_with_progress "$name" "$log" packages "$total" \
		go build -v -trimpath -ldflags "-s -w $ldflags" -o "$BIN/.$name.partial" "$pkg") ||
		fail_from_log "go build of $name" "$log"
	mv -f "$BIN/.$name.partial" "$BIN/$name"
	local took=$((SECONDS - start))
	echo "$name $took" >>"$DIR/build-times.txt"
	say "$name: built in $(elapsed $took)"
}

# kwok's default Stages, the set kwokctl installs: node initialize and heartbeat (with a lease), pod ready,
# complete and delete. Copied from the pinned kwok module, so they always match the binary.
KWOK_STAGES=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
	pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)

write_kwok_stages() {
	local out="$BIN/kwok-stages.yaml" module_dir stage
	if [ -f "$out" ]; then
		say "kwok-stages.yaml: cached"
		return 0
	fi
	module_dir="$(cd "$SRC/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)" ||
		die "cannot locate the sigs.k8s.io/kwok module for its default Stages; delete $SRC/kwok and rerun"
	for stage in "${KWOK_STAGES[@]}"; do
		echo "---"
		cat "$module_dir/kustomize/stage/$stage"
	done >"$out.partial" || die "a default kwok Stage is missing from $module_dir/kustomize/stage"
	mv -f "$out.partial" "$out"
	say "kwok-stages.yaml: written"
}

write_kubernetes_go_mod() {
	local dir="$1" upstream
	upstream="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
	[ -n "$upstream" ] || die "module download failed for k8s.io/kubernetes@${KUBERNETES_VERSION}; check GOPROXY"
	{
		echo "module canaria.local/devcluster/kubernetes"
		echo
		echo "go ${GO_MIN_VERSION}"
		grep '^godebug ' "$upstream" || true
		echo
		echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
		echo
		echo "// Generated from k8s.io/kubernetes's own go.mod: every staging module at its published version."
		echo "replace ("
		sed -n "s#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*#\t\1 => \1 ${KUBERNETES_STAGING_VERSION}#p" "$upstream"
		echo ")"
	} >"$dir/go.mod"
	grep -q ' => k8s.io/' "$dir/go.mod" || die "found no staging replace lines in k8s.io/kubernetes's go.mod ($upstream)"
}

write_etcd_go_mod() {
	printf 'module canaria.local/devcluster/etcd\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
		"$GO_MIN_VERSION" "$ETCD_VERSION" >"$1/go.mod"
	cp "$HERE/templates/etcd-main.go" "$1/main.go"
}

write_plain_go_mod() {
	printf 'module canaria.local/devcluster/%s\n\ngo %s\n' "$(basename "$1")" "$GO_MIN_VERSION" >"$1/go.mod"
}

kubernetes_ldflags() {
	local major="${KUBERNETES_VERSION#v}" minor
	minor="${major#*.}"
	minor="${minor%%.*}"
	major="${major%%.*}"
	local flags="" pkg key val
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		for key in gitVersion gitMajor gitMinor gitTreeState buildDate; do
			case "$key" in
			gitVersion) val="$KUBERNETES_VERSION" ;;
			gitMajor) val="$major" ;;
			gitMinor) val="$minor" ;;
			gitTreeState) val="clean" ;;
			buildDate) val="1970-01-01T00:00:00Z" ;; # reproducible: the cache key, not the clock, says when
			esac
			flags+=" -X $pkg.$key=$val"
		done
	done
	echo "$flags"
}

helm_ldflags() {
	local minor="${KUBERNETES_STAGING_VERSION#v0.}"
	minor="${minor%%.*}"
	echo "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
		"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor}" \
		"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}"
}

link_bin_into_repo() {
	mkdir -p "$ROOT/.devcluster"
	if [ -d "$ROOT/.devcluster/bin" ] && [ ! -L "$ROOT/.devcluster/bin" ]; then
		rm -rf "$ROOT/.devcluster/bin" # an old real directory: the cache is the source of truth
	fi
	# Atomically: a running cluster or test may be resolving binaries through the old link right now.
	ln -sfn "$BIN" "$ROOT/.devcluster/.bin.$$"
	mv -fT "$ROOT/.devcluster/.bin.$$" "$ROOT/.devcluster/bin"
}

build_all() {
	local k8s="$SRC/kubernetes" etcd="$SRC/etcd" kwok="$SRC/kwok" helm="$SRC/helm"
	local k8s_ldflags
	k8s_ldflags="$(kubernetes_ldflags)"

	if [ ! -x "$BIN/etcd" ]; then prepare_module "$etcd" write_etcd_go_mod "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"; fi
	build_binary etcd "$etcd" . "-X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"

	local k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl) cmd missing=()
	for cmd in "${k8s_cmds[@]}"; do [ -x "$BIN/$cmd" ] || missing+=("k8s.io/kubernetes/cmd/$cmd@${KUBERNETES_VERSION}"); done
	if [ "${#missing[@]}" -gt 0 ]; then prepare_module "$k8s" write_kubernetes_go_mod "${missing[@]}"; fi
	for cmd in "${k8s_cmds[@]}"; do build_binary "$cmd" "$k8s" "k8s.io/kubernetes/cmd/$cmd" "$k8s_ldflags"; done

	if [ ! -x "$BIN/kwok" ] || [ ! -f "$BIN/kwok-stages.yaml" ]; then
		prepare_module "$kwok" write_plain_go_mod "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
	fi
	build_binary kwok "$kwok" sigs.k8s.io/kwok/cmd/kwok \
		"-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}"
	write_kwok_stages

	if [ ! -x "$BIN/helm" ]; then prepare_module "$helm" write_plain_go_mod "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"; fi
	build_binary helm "$helm" helm.sh/helm/v3/cmd/helm "$(helm_ldflags)"
}

main() {
	check_go
	local cache_root="${CANARIA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canaria}/devcluster"
	DIR="$cache_root/$(cache_key)"
	BIN="$DIR/bin"
	SRC="$DIR/src"
	LOGS="$DIR/logs"
	mkdir -p "$BIN" "$SRC" "$LOGS" || die "cannot create the cache directory $DIR; set CANARIA_CACHE to a writable path"

	# One build per cache directory at a time (CI and a developer may start one together).
	exec 9>"$DIR/.lock"
	if ! flock -n 9; then
		say "another build.sh is using $DIR; waiting for it"
		flock 9
	fi

	build_all
	link_bin_into_repo
	say "all binaries ready in $(elapsed $((SECONDS - START_ALL))): $ROOT/.devcluster/bin -> $BIN"
}

main "$@"
