#!/usr/bin/env bash
# Builds (or reuses) the devcluster's binaries from their Go modules with the machine's Go:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm, prometheus, promtool,
# prometheus-operator and traefik; and writes, from the same pinned modules, kwok's default Stages and the
# third-party CRDs (the Prometheus Operator's monitoring.coreos.com CRDs, the Gateway API standard channel).
#
# Cache (CANARIA_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/canaria; everything under devcluster/):
#   store/<name>-<version>-<key>/  one artifact each, keyed by its own recipe (name, pinned version, wrapper
#                                  module, package, tags, ldflags): changing one pin rebuilds only its part.
#   modules/<name>-<version>-<key>/ the wrapper modules the binaries are built from (go.mod, go.sum).
#   bin/<key>/                     one directory of relative symlinks per combination of store entries
#                                  (binaries, kwok-stages.yaml, crds/*.yaml); `.devcluster/bin` points at it.
#   logs/, build-times.txt         build logs; seconds taken by each build and module download.
# A fresh clone on the same machine reuses all of it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
# shellcheck source=versions.env
source "$HERE/versions.env"

# Never let Go fetch a newer toolchain by itself: only package registries are reachable.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -mod=mod"

# Part of every binary's key: changing them rebuilds everything.
GO_BUILD_FLAGS="-trimpath"
BASE_LDFLAGS="-s -w"

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

# A short hash of the arguments, for cache keys.
hash_of() { printf '%s\0' "$@" | sha256sum | cut -c1-12; }

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

# `go mod download -json` field $2 ("Dir": the extracted module, "GoMod": its go.mod) of module@version $1.
module_file() {
	local path
	path="$(go mod download -json "$1" | sed -n "s/^\t\"$2\": \"\(.*\)\",\$/\1/p")"
	[ -n "$path" ] || die "module download failed for $1: check access to the Go module proxy (GOPROXY=$(go env GOPROXY))"
	echo "$path"
}

# --- wrapper modules ------------------------------------------------------------------------------------
# Each binary is built from a small module of ours. Its directory is keyed by the command that writes its
# go.mod (that function's source and arguments), the values it reads, and the packages `go get` fetches.

declare -A MODULE_WRITER MODULE_GET

# Sets MODULE to the directory of wrapper module $1 (version $2), written by command $3 (a function and
# its arguments; the directory is passed first), reading the values $4, fetching packages "${@:5}".
wrapper_module() {
	local name="$1" version="$2" writer="$3" inputs="$4"
	shift 4
	local -a command
	read -ra command <<<"$writer"
	MODULE="$MODULES/$name-$version-$(hash_of "$GO_MIN_VERSION" "$(declare -f "${command[0]}")" "$writer" "$inputs" "$@")"
	MODULE_WRITER[$MODULE]="$writer"
	MODULE_GET[$MODULE]="$*"
}

# Creates wrapper module $1 once: its go.mod, then `go get` of its packages (which fills go.sum).
prepare_module() {
	local dir="$1"
	[ -f "$dir/.prepared" ] && return 0
	local name log start=$SECONDS
	local -a command packages
	name="$(basename "$dir")"
	read -ra command <<<"${MODULE_WRITER[$dir]}"
	read -ra packages <<<"${MODULE_GET[$dir]}"
	rm -rf "$dir"
	mkdir -p "$dir"
	"${command[0]}" "$dir" "${command[@]:1}"
	log="$LOGS/$name-download.log"
	: >"$log"
	say "${name%-*}: downloading modules (${packages[*]})"
	(cd "$dir" && run_with_progress "${name%-*} download" "$log" modules "" go get "${packages[@]}") ||
		fail_download "${name%-*}" "$log"
	touch "$dir/.prepared"
	echo "modules/$name $((SECONDS - start))" >>"$CACHE_ROOT/build-times.txt"
}

write_plain_go_mod() {
	local name
	name="$(basename "$1")"
	printf 'module canaria.local/devcluster/%s\n\ngo %s\n' "${name%-*}" "$GO_MIN_VERSION" >"$1/go.mod"
}

write_etcd_go_mod() {
	printf 'module canaria.local/devcluster/etcd\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
		"$GO_MIN_VERSION" "$ETCD_VERSION" >"$1/go.mod"
	cp "$HERE/templates/etcd-main.go" "$1/main.go"
}

write_kubernetes_go_mod() {
	local dir="$1" upstream
	upstream="$(module_file "k8s.io/kubernetes@${KUBERNETES_VERSION}" GoMod)"
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

# The replace and exclude directives of go.mod $1, one per line in single-line form ("replace a => b v1").
go_mod_directives() {
	awk '
		/^[ \t]*(\/\/.*)?$/ { next }
		/^(replace|exclude)[ \t]*\(/ { block = $1; next }
		block != "" && /^[ \t]*\)/ { block = ""; next }
		block != "" { sub(/^[ \t]+/, ""); sub(/[ \t]*\/\/.*$/, ""); print block " " $0; next }
		/^(replace|exclude)[ \t]/ { sub(/[ \t]*\/\/.*$/, ""); print }
	' "$1"
}

# A wrapper for module $2 at version $3 whose go.mod has replace directives (`go install` ignores them, so
# it cannot build such a module; a wrapper's own go.mod applies them). Generated from that go.mod: a local
# replace (a sub-module of the same repository, tagged with the same version) becomes a require at $3;
# the other replace and exclude directives are copied.
write_wrapper_go_mod() {
	local dir="$1" module="$2" version="$3" upstream directives name
	upstream="$(module_file "$module@$version" GoMod)"
	directives="$(go_mod_directives "$upstream")"
	name="$(basename "$dir")"
	{
		printf 'module canaria.local/devcluster/%s\n\ngo %s\n\n' "${name%-*}" "$GO_MIN_VERSION"
		echo "// Generated from $module's own go.mod."
		echo "require $module $version"
		sed -n "s#^replace \([^ ]*\) => \./.*#require \1 $version#p" <<<"$directives"
		grep -v '^replace [^ ]* => \./' <<<"$directives" || true
	} >"$dir/go.mod"
}

# Checked whenever Traefik or the Gateway API CRDs are (re)made, so a change of either pin is checked.
write_traefik_go_mod() {
	check_gateway_api_version
	write_wrapper_go_mod "$1" github.com/traefik/traefik/v3 "$TRAEFIK_VERSION"
}

# Prometheus's module versions encode its release (v0.316.0 is Prometheus 3.16.0); the release is what
# `prometheus --version` and the Prometheus Operator's spec.version expect.
prometheus_release() {
	local minor="${PROMETHEUS_VERSION#v0.}" patch
	patch="${minor#*.}"
	minor="${minor%%.*}"
	echo "$((minor / 100)).$((minor % 100)).${patch}"
}

write_prometheus_go_mod() {
	local module_dir released
	write_plain_go_mod "$1"
	module_dir="$(module_file "github.com/prometheus/prometheus@${PROMETHEUS_VERSION}" Dir)"
	released="$(cat "$module_dir/VERSION")"
	[ "$released" = "$(prometheus_release)" ] ||
		die "github.com/prometheus/prometheus ${PROMETHEUS_VERSION} is Prometheus ${released}, not $(prometheus_release): fix prometheus_release in devcluster/build.sh"
}

# --- store entries ---------------------------------------------------------------------------------------

ARTIFACTS=() # what the combination directory links to, relative to $STORE: "<entry>/<file>"

# Builds package $4 of wrapper module $3 (tags $5, extra ldflags $6) into the store as binary $1 at version
# $2, unless that entry exists. Sets ENTRY.
build_binary() {
	local name="$1" version="$2" module="$3" pkg="$4" tags="$5" ldflags="$6"
	ENTRY="$STORE/$name-$version-$(hash_of "$name" "$version" "$(basename "$module")" "$pkg" "$tags" \
		"$GO_BUILD_FLAGS" "$BASE_LDFLAGS $ldflags")"
	ARTIFACTS+=("$(basename "$ENTRY")/$name")
	if [ -x "$ENTRY/$name" ]; then
		say "$name $version: cached"
		return 0
	fi
	prepare_module "$module"
	local log="$LOGS/$name.log" start=$SECONDS total partial="$ENTRY.partial"
	: >"$log"
	rm -rf "$partial"
	mkdir -p "$partial"
	total="$(cd "$module" && go list ${tags:+-tags "$tags"} -deps "$pkg" 2>>"$log" | wc -l)" || total=""
	say "$name $version: building $pkg${total:+ (${total} packages; those already in the Go build cache are not counted)}"
	# shellcheck disable=SC2086 # GO_BUILD_FLAGS is a list of flags
	(cd "$module" && run_with_progress "$name" "$log" packages "$total" \
		go build -v $GO_BUILD_FLAGS ${tags:+-tags "$tags"} -ldflags "$BASE_LDFLAGS $ldflags" -o "$partial/$name" "$pkg") ||
		fail_from_log "go build of $name" "$log"
	mv -T "$partial" "$ENTRY"
	local took=$((SECONDS - start))
	echo "$(basename "$ENTRY") $took" >>"$CACHE_ROOT/build-times.txt"
	say "$name $version: built in $(elapsed $took)"
}

# Makes store entry $2 (a name) with function $1 unless it exists; the function fills the directory it is
# given. Adds the files it wrote to ARTIFACTS; sets ENTRY.
make_entry() {
	local fill="$1" name="$2"
	ENTRY="$STORE/$name"
	if [ -d "$ENTRY" ]; then
		say "$name: cached"
	else
		rm -rf "$ENTRY.partial"
		mkdir -p "$ENTRY.partial"
		"$fill" "$ENTRY.partial"
		mv -T "$ENTRY.partial" "$ENTRY"
		say "$name: written"
	fi
	local file
	for file in "$ENTRY"/*; do ARTIFACTS+=("$name/$(basename "$file")"); done
}

# kwok's default Stages, the set kwokctl installs: node initialize and heartbeat (with a lease), pod ready,
# complete and delete. Copied from the pinned kwok module, so they always match the binary.
KWOK_STAGES=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
	pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)

write_kwok_stages() {
	local module_dir stage
	module_dir="$(module_file "sigs.k8s.io/kwok@${KWOK_VERSION}" Dir)"
	for stage in "${KWOK_STAGES[@]}"; do
		echo "---"
		cat "$module_dir/kustomize/stage/$stage"
	done >"$1/kwok-stages.yaml" || die "a default kwok Stage is missing from $module_dir/kustomize/stage"
}

# Every monitoring.coreos.com CRD (the Prometheus Operator's informers watch them all), as printed by the
# pinned operator's `crds` command, one file per CRD named like upstream's: <group>_<plural>.yaml.
write_monitoring_crds() {
	local operator="$STORE/$PROMETHEUS_OPERATOR_ENTRY/prometheus-operator" count
	"$operator" crds >"$1/all.yaml" || die "\`$operator crds\` failed"
	awk -v dir="$1" '
		function flush() {
			if (doc == "") return
			if (name == "") { print "a document without metadata.name" > "/dev/stderr"; exit 1 }
			split(name, parts, ".")
			file = dir "/" substr(name, length(parts[1]) + 2) "_" parts[1] ".yaml"
			printf "%s", doc > file
			close(file)
			doc = ""; name = ""
		}
		/^---$/ { flush(); next }
		/^metadata:/ { in_metadata = 1 }
		/^[^ ]/ && !/^metadata:/ { in_metadata = 0 }
		in_metadata && /^  name: / && name == "" { name = $2 }
		{ doc = doc $0 "\n" }
		END { flush() }
	' "$1/all.yaml" || die "cannot split the output of \`$operator crds\` into files"
	count="$(grep -c '^kind: CustomResourceDefinition' "$1/all.yaml")"
	rm "$1/all.yaml"
	[ "$count" -gt 0 ] && [ "$(find "$1" -name 'monitoring.coreos.com_*.yaml' | wc -l)" -eq "$count" ] ||
		die "\`$operator crds\` printed ${count} CRDs, not one file each in $1"
}

# The Gateway API standard channel (config/crd/standard of the module), at the version Traefik requires.
write_gateway_crds() {
	local module_dir
	check_gateway_api_version
	module_dir="$(module_file "sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}" Dir)"
	cp "$module_dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$1/" ||
		die "no Gateway API CRDs in $module_dir/config/crd/standard"
	chmod u+w "$1"/*.yaml # the module cache is read-only
}

check_gateway_api_version() {
	local traefik_go_mod required
	traefik_go_mod="$(module_file "github.com/traefik/traefik/v3@${TRAEFIK_VERSION}" GoMod)"
	required="$(sed -n 's#^[[:space:]]*sigs.k8s.io/gateway-api \(v[^ ]*\).*#\1#p' "$traefik_go_mod")"
	[ "$required" = "$GATEWAY_API_VERSION" ] ||
		die "Traefik ${TRAEFIK_VERSION} requires sigs.k8s.io/gateway-api ${required:-(none)}, but versions.env pins GATEWAY_API_VERSION=${GATEWAY_API_VERSION}: make them agree"
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

build_all() {
	wrapper_module etcd "$ETCD_VERSION" write_etcd_go_mod "$ETCD_VERSION $(cat "$HERE/templates/etcd-main.go")" \
		"go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
	build_binary etcd "$ETCD_VERSION" "$MODULE" . "" "-X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"

	local k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl) cmd k8s_packages=()
	for cmd in "${k8s_cmds[@]}"; do k8s_packages+=("k8s.io/kubernetes/cmd/$cmd@${KUBERNETES_VERSION}"); done
	wrapper_module kubernetes "$KUBERNETES_VERSION" write_kubernetes_go_mod \
		"$KUBERNETES_VERSION $KUBERNETES_STAGING_VERSION" "${k8s_packages[@]}"
	for cmd in "${k8s_cmds[@]}"; do
		build_binary "$cmd" "$KUBERNETES_VERSION" "$MODULE" "k8s.io/kubernetes/cmd/$cmd" "" "$(kubernetes_ldflags)"
	done

	wrapper_module kwok "$KWOK_VERSION" write_plain_go_mod "" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
	build_binary kwok "$KWOK_VERSION" "$MODULE" sigs.k8s.io/kwok/cmd/kwok "" \
		"-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}"
	make_entry write_kwok_stages \
		"kwok-stages-$KWOK_VERSION-$(hash_of "$KWOK_VERSION" "$(declare -f write_kwok_stages)" "${KWOK_STAGES[@]}")"

	wrapper_module helm "$HELM_VERSION" write_plain_go_mod "" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
	build_binary helm "$HELM_VERSION" "$MODULE" helm.sh/helm/v3/cmd/helm "" "$(helm_ldflags)"

	# Only Kubernetes service discovery (plugins/plugin_*.go): the other mechanisms' SDKs double the build.
	local prometheus=github.com/prometheus/prometheus
	wrapper_module prometheus "$PROMETHEUS_VERSION" write_prometheus_go_mod \
		"$PROMETHEUS_VERSION $(declare -f write_plain_go_mod prometheus_release)" \
		"$prometheus/cmd/prometheus@${PROMETHEUS_VERSION}" "$prometheus/cmd/promtool@${PROMETHEUS_VERSION}"
	for cmd in prometheus promtool; do
		build_binary "$cmd" "$PROMETHEUS_VERSION" "$MODULE" "$prometheus/cmd/$cmd" remove_all_sd,enable_kubernetes_sd \
			"-X github.com/prometheus/common/version.Version=$(prometheus_release)"
	done

	local operator=github.com/prometheus-operator/prometheus-operator
	wrapper_module prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
		"write_wrapper_go_mod $operator $PROMETHEUS_OPERATOR_VERSION" "$(declare -f go_mod_directives)" \
		"$operator/cmd/operator@${PROMETHEUS_OPERATOR_VERSION}"
	build_binary prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" "$MODULE" "$operator/cmd/operator" "" \
		"-X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v}"
	PROMETHEUS_OPERATOR_ENTRY="$(basename "$ENTRY")"
	make_entry write_monitoring_crds \
		"crds-monitoring-$PROMETHEUS_OPERATOR_VERSION-$(hash_of "$PROMETHEUS_OPERATOR_ENTRY" "$(declare -f write_monitoring_crds)")"

	# No version ldflags for Traefik: its version stays "dev", the one value that never calls home
	# (update.traefik.io) whatever `global.checkNewVersion` says.
	local traefik=github.com/traefik/traefik/v3
	wrapper_module traefik "$TRAEFIK_VERSION" write_traefik_go_mod \
		"$TRAEFIK_VERSION $(declare -f write_wrapper_go_mod go_mod_directives)" "$traefik/cmd/traefik@${TRAEFIK_VERSION}"
	build_binary traefik "$TRAEFIK_VERSION" "$MODULE" "$traefik/cmd/traefik" "" ""
	make_entry write_gateway_crds \
		"crds-gateway-$GATEWAY_API_VERSION-$(hash_of "$GATEWAY_API_VERSION" "$(declare -f write_gateway_crds)")"
}

# Makes (once) the directory of symlinks for this combination of store entries and sets BIN to it. CRD
# files go to its crds/ subdirectory, everything else beside the binaries.
link_combination() {
	BIN="$CACHE_ROOT/bin/$(hash_of "${ARTIFACTS[@]}")"
	[ -d "$BIN" ] && return 0
	local partial="$BIN.partial" artifact
	rm -rf "$partial"
	mkdir -p "$partial/crds"
	for artifact in "${ARTIFACTS[@]}"; do
		case "$artifact" in
		crds-*) ln -s "../../../store/$artifact" "$partial/crds/$(basename "$artifact")" ;;
		*) ln -s "../../store/$artifact" "$partial/$(basename "$artifact")" ;;
		esac
	done
	mv -T "$partial" "$BIN"
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

main() {
	check_go
	CACHE_ROOT="${CANARIA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canaria}/devcluster"
	STORE="$CACHE_ROOT/store"
	MODULES="$CACHE_ROOT/modules"
	LOGS="$CACHE_ROOT/logs"
	mkdir -p "$STORE" "$MODULES" "$LOGS" "$CACHE_ROOT/bin" ||
		die "cannot create the cache directory $CACHE_ROOT; set CANARIA_CACHE to a writable path"

	# One build at a time per cache (CI and a developer may start one together).
	exec 9>"$CACHE_ROOT/.lock"
	if ! flock -n 9; then
		say "another build.sh is using $CACHE_ROOT; waiting for it"
		flock 9
	fi

	build_all
	link_combination
	link_bin_into_repo
	say "all binaries ready in $(elapsed $((SECONDS - START_ALL))): $ROOT/.devcluster/bin -> $BIN"
}

main "$@"
