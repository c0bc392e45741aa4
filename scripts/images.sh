#!/usr/bin/env bash
# Builds the test images as OCI image-layout tarballs from Debian packages, without docker.
#
#   scripts/images.sh            # -> out/images/*.tar (amd64, plus arm64 where Debian serves it)
#   ARCHES=amd64 scripts/images.sh
#   FORCE=1 scripts/images.sh    # rebuild even when the outputs are up to date
#
# Every tarball holds one multi-arch image index named as the manifests name the image
# (annotations org.opencontainers.image.ref.name and io.containerd.image.name), so both
# `shoal image import FILE` and `skopeo copy --all oci-archive:FILE docker://HOST/REPO` take it.
# Layers are reproducible (sorted, mtime 0, owner 0), so digests only change with the packages.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out/images}
WORK=$OUT/.work
ARCHES=${ARCHES:-"amd64 arm64"}
SELF_SUM=$(sha256sum "$0" | cut -d' ' -f1)
IMAGES=(
  "nginx_latest|docker.io/library/nginx:latest"
  "busybox_1.25|docker.io/library/busybox:1.25"
  "whatwant_node-web_1.0|docker.io/whatwant/node-web:1.0"
  "kodekloud_throw-dice_latest|docker.io/kodekloud/throw-dice:latest"
  "csup96_tour-review_latest|docker.io/csup96/tour-review:latest"
  "shoal-test_python_3.11|shoal.test/python:3.11"
)
# Packages per image; their library dependencies are resolved by ELF NEEDED entries.
NGINX_PKGS="nginx libc6 libcrypt1 libpcre2-8-0 libssl3 zlib1g libgcc-s1"
# Python with its standard library and TLS (for servers the tests write, e.g. an admission
# webhook served by a pod); only the extension modules such servers need.
PYTHON_PKGS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libssl3 libexpat1 zlib1g"
PYTHON_MODULES="_ssl _hashlib _json _contextvars _asyncio _queue"

log() { echo "images.sh: $*" >&2; }

up_to_date() {
  [[ -z ${FORCE:-} && -f $OUT/.stamp && $(cat "$OUT/.stamp") == "$SELF_SUM $ARCHES" ]] || return 1
  for spec in "${IMAGES[@]}"; do [[ -f $OUT/${spec%%|*}.tar ]] || return 1; done
}

if up_to_date; then
  log "up to date in $OUT"
  exit 0
fi

for tool in dpkg-deb readelf sha256sum gzip tar apt-get; do
  command -v "$tool" >/dev/null || { log "missing tool: $tool"; exit 1; }
done

apt_retry() { # apt-get with waiting for a lock held by someone else
  local i
  for i in $(seq 1 30); do
    if apt-get -o DPkg::Lock::Timeout=60 "$@"; then return 0; fi
    sleep 10
  done
  return 1
}

host_arch=$(dpkg --print-architecture)
# Foreign architectures need their package lists.
build_arches=""
for arch in $ARCHES; do
  if [[ $arch != "$host_arch" ]] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    log "adding dpkg architecture $arch"
    dpkg --add-architecture "$arch"
    apt_retry update -qq || true
  fi
  build_arches+=" $arch"
done

# Downloads and unpacks PKG:ARCH into $WORK/debs/ARCH (once).
fetch() {
  local arch=$1 pkg=$2
  local dir=$WORK/debs/$arch
  mkdir -p "$dir/x" "$dir/dl"
  [[ -f $dir/dl/$pkg.done ]] && return 0
  local deb
  deb=$(ls "$dir/dl/${pkg}"_*_"$arch".deb "$dir/dl/${pkg}"_*_all.deb 2>/dev/null | head -1 || true)
  if [[ -z $deb ]]; then
    if ! (cd "$dir/dl" && apt_retry download -qq "$pkg:$arch" >/dev/null 2>&1); then
      # Lists may be missing or stale: refresh once.
      apt_retry update -qq >/dev/null 2>&1 || true
      (cd "$dir/dl" && apt-get download -qq "$pkg:$arch" >/dev/null) || return 1
    fi
    deb=$(ls "$dir/dl/${pkg}"_*.deb | head -1)
  fi
  dpkg-deb -x "$deb" "$dir/x"
  touch "$dir/dl/$pkg.done"
}

# Copies FILE (a path inside the unpacked packages) into ROOTFS with the shared libraries it
# needs, following NEEDED entries and the ELF interpreter.
copy_with_libs() {
  local arch=$1 rootfs=$2 file=$3 src=$WORK/debs/$1/x
  local -a queue=("$file")
  local -A seen=()
  while ((${#queue[@]})); do
    local f=${queue[0]}
    queue=("${queue[@]:1}")
    [[ -n ${seen[$f]:-} ]] && continue
    seen[$f]=1
    copy_path "$src" "$rootfs" "$f"
    local real
    real=$(resolve_in "$src" "$f")
    local interp
    interp=$(readelf -lW "$src$real" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
    [[ -n $interp ]] && queue+=("$interp")
    local soname
    for soname in $(readelf -dW "$src$real" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      local found=""
      local cand
      for cand in "$src"/lib/*-linux-gnu*/"$soname" "$src"/usr/lib/*-linux-gnu*/"$soname" \
        "$src/lib/$soname" "$src/usr/lib/$soname"; do
        if [[ -e $cand || -L $cand ]]; then
          found=${cand#"$src"}
          break
        fi
      done
      [[ -n $found ]] || { log "$arch: $soname (needed by $f) not found in packages"; exit 1; }
      queue+=("$found")
    done
  done
}

# Resolves symlinks of PATH inside SRC (absolute links are relative to SRC).
resolve_in() {
  local src=$1 p=$2 i
  for i in $(seq 1 20); do
    local acc="" rest=${p#/} changed=""
    while [[ -n $rest ]]; do
      local c=${rest%%/*}
      [[ $rest == */* ]] && rest=${rest#*/} || rest=""
      if [[ -L $src$acc/$c ]]; then
        local t
        t=$(readlink "$src$acc/$c")
        if [[ $t == /* ]]; then p=$t; else p=$acc/$t; fi
        [[ -n $rest ]] && p=$p/$rest
        p=$(realpath -m -s "/$p")
        changed=1
        break
      fi
      acc=$acc/$c
    done
    [[ -z $changed ]] && { echo "$acc"; return; }
  done
  echo "$p"
}

# Copies PATH from SRC to DST, recreating symlinks along the way (their targets too).
copy_path() {
  local src=$1 dst=$2 p=$3
  local acc="" rest=${p#/}
  while [[ -n $rest ]]; do
    local c=${rest%%/*}
    [[ $rest == */* ]] && rest=${rest#*/} || rest=""
    if [[ -L $src$acc/$c ]]; then
      if [[ ! -L $dst$acc/$c ]]; then
        mkdir -p "$dst$acc"
        cp -a "$src$acc/$c" "$dst$acc/$c"
      fi
      local t
      t=$(readlink "$src$acc/$c")
      [[ $t == /* ]] || t=$acc/$t
      copy_path "$src" "$dst" "$(realpath -m -s "/$t")${rest:+/$rest}"
      return
    fi
    acc=$acc/$c
  done
  if [[ -d $src$acc ]]; then
    mkdir -p "$dst$acc"
  else
    mkdir -p "$(dirname "$dst$acc")"
    cp -a "$src$acc" "$dst$acc"
  fi
}

# A base filesystem: directories, users, busybox with its applets.
base_rootfs() {
  local arch=$1 rootfs=$2
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,var/tmp,var/log,run,proc,sys,dev,home}
  chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
  chmod 700 "$rootfs/root"
  cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
  cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
www-data:x:33:
nogroup:x:65534:
EOF
  printf 'root:*:19000:0:99999:7:::\nwww-data:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >"$rootfs/etc/shadow"
  chmod 640 "$rootfs/etc/shadow"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  : >"$rootfs/etc/hostname"
  : >"$rootfs/etc/hosts"
  : >"$rootfs/etc/resolv.conf"
  fetch "$arch" busybox-static
  cp "$WORK/debs/$arch/x/bin/busybox" "$rootfs/bin/busybox"
  local applet
  for applet in $(cat "$WORK/applets"); do
    local dir=${applet%/*} name=${applet##*/}
    mkdir -p "$rootfs$dir"
    [[ -e $rootfs$applet || $name == busybox ]] || ln -s /bin/busybox "$rootfs$applet"
  done
}

# Writes a reproducible gzip layer of ROOTFS into the layout's blobs; prints "digest diffid size".
make_layer() {
  local rootfs=$1 blobs=$2 tmp=$WORK/layer.tar
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$tmp" .
  local diffid
  diffid=$(sha256sum "$tmp" | cut -d' ' -f1)
  gzip -n -6 -c "$tmp" >"$tmp.gz"
  local digest size
  digest=$(sha256sum "$tmp.gz" | cut -d' ' -f1)
  size=$(stat -c %s "$tmp.gz")
  mv "$tmp.gz" "$blobs/$digest"
  rm -f "$tmp"
  echo "$digest $diffid $size"
}

# Stores a JSON document as a blob; prints "digest size".
put_json() {
  local blobs=$1 json=$2 digest
  digest=$(printf '%s' "$json" | sha256sum | cut -d' ' -f1)
  printf '%s' "$json" >"$blobs/$digest"
  echo "$digest ${#json}"
}

json_array() { # json_array a b c -> ["a","b","c"]
  local out="" x
  for x in "$@"; do
    x=${x//\\/\\\\}
    x=${x//\"/\\\"}
    out+="${out:+,}\"$x\""
  done
  echo "[$out]"
}

# Builds the image manifest for one arch; prints '<manifest descriptor json>'.
# Args: arch rootfs blobs entrypoint-json cmd-json port env-json [stop-signal]
image_manifest() {
  local arch=$1 rootfs=$2 blobs=$3 entrypoint=$4 cmd=$5 port=$6 env=$7 stop=${8:-}
  local layer digest diffid size
  layer=$(make_layer "$rootfs" "$blobs")
  read -r digest diffid size <<<"$layer"
  local variant="" exposed="" stopsig=""
  [[ $arch == arm64 ]] && variant=',"variant":"v8"'
  [[ -n $port ]] && exposed=",\"ExposedPorts\":{\"$port\":{}}"
  [[ -n $stop ]] && stopsig=",\"StopSignal\":\"$stop\""
  local config
  config="{\"architecture\":\"$arch\"$variant,\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{\"Entrypoint\":$entrypoint,\"Cmd\":$cmd,\"Env\":$env,\"WorkingDir\":\"/\"$exposed$stopsig},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diffid\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"scripts/images.sh\"}]}"
  local cdigest csize
  read -r cdigest csize <<<"$(put_json "$blobs" "$config")"
  local manifest
  manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cdigest\",\"size\":$csize},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}]}"
  local mdigest msize
  read -r mdigest msize <<<"$(put_json "$blobs" "$manifest")"
  echo "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$mdigest\",\"size\":$msize,\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"$variant}}"
}

# Wraps per-arch manifests into an OCI layout tarball named FILE for NAME.
write_layout() {
  local file=$1 name=$2 layout=$3
  shift 3
  local entries
  entries=$(IFS=,; echo "$*")
  local index="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[$entries]}"
  local idigest isize
  read -r idigest isize <<<"$(put_json "$layout/blobs/sha256" "$index")"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"}}]}' \
    "$idigest" "$isize" "$name" "$name" >"$layout/index.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$OUT/$file.tar.tmp" oci-layout index.json blobs
  mv "$OUT/$file.tar.tmp" "$OUT/$file.tar"
  log "wrote $OUT/$file.tar ($name, $(du -h "$OUT/$file.tar" | cut -f1))"
}

mkdir -p "$OUT" "$WORK"

# The applet list comes from the host's busybox-static (the same package version serves
# every architecture).
fetch "$host_arch" busybox-static
"$WORK/debs/$host_arch/x/bin/busybox" --list-full | sed 's|^|/|' >"$WORK/applets"

# Which architectures can be fetched here.
arches=""
for arch in $build_arches; do
  if fetch "$arch" busybox-static 2>/dev/null; then
    arches+=" $arch"
  else
    log "no Debian packages for $arch here: building without it"
  fi
done
[[ -n $arches ]] || { log "no architecture could be fetched"; exit 1; }

PATH_ENV=$(json_array "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")

build_image() {
  local file=$1 name=$2 kind=$3
  local layout=$WORK/layout/$file
  rm -rf "$layout"
  mkdir -p "$layout/blobs/sha256"
  local -a entries=()
  local arch
  for arch in $arches; do
    local rootfs=$WORK/rootfs/$file-$arch
    rm -rf "$rootfs"
    base_rootfs "$arch" "$rootfs"
    case $kind in
      nginx)
        local p
        for p in $NGINX_PKGS; do fetch "$arch" "$p"; done
        copy_with_libs "$arch" "$rootfs" /usr/sbin/nginx
        mkdir -p "$rootfs"/etc/nginx "$rootfs"/var/lib/nginx/{body,proxy,fastcgi,uwsgi,scgi} \
          "$rootfs"/var/log/nginx "$rootfs"/usr/share/nginx/html "$rootfs"/var/www
        cat >"$rootfs/etc/nginx/nginx.conf" <<'EOF'
user www-data;
worker_processes auto;
pid /run/nginx.pid;
error_log /dev/stderr notice;

events {
    worker_connections 1024;
}

http {
    types {
        text/html html htm;
        text/css css;
        text/plain txt;
        application/javascript js;
        application/json json;
        image/png png;
        image/svg+xml svg;
    }
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    keepalive_timeout 65;

    server {
        listen 80 default_server;
        server_name _;
        root /usr/share/nginx/html;
        index index.html;
        location / {
            try_files $uri $uri/ =404;
        }
    }
}
EOF
        cat >"$rootfs/usr/share/nginx/html/index.html" <<'EOF'
<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
</body>
</html>
EOF
        cp "$rootfs/usr/share/nginx/html/index.html" "$rootfs/usr/share/nginx/html/50x.html"
        entries+=("$(image_manifest "$arch" "$rootfs" "$layout/blobs/sha256" '[]' \
          "$(json_array nginx -g "daemon off;")" 80/tcp "$PATH_ENV" SIGQUIT)")
        ;;
      busybox)
        entries+=("$(image_manifest "$arch" "$rootfs" "$layout/blobs/sha256" '[]' '["sh"]' "" "$PATH_ENV")")
        ;;
      node-web)
        mkdir -p "$rootfs/usr/local/bin"
        cat >"$rootfs/usr/local/bin/node-web-handler" <<'EOF'
#!/bin/sh
# One HTTP exchange on stdin/stdout: every path answers "You've hit <hostname>".
CR=$(printf '\r')
read -r request || exit 0
while read -r header; do
    case "$header" in "" | "$CR") break ;; esac
done
body="You've hit $(hostname)"
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n' \
    $((${#body} + 1)) "$body"
EOF
        cat >"$rootfs/usr/local/bin/node-web" <<'EOF'
#!/bin/sh
echo "Server starting..."
exec nc -ll -p "${PORT:-8080}" -e /usr/local/bin/node-web-handler
EOF
        chmod 755 "$rootfs/usr/local/bin/node-web" "$rootfs/usr/local/bin/node-web-handler"
        entries+=("$(image_manifest "$arch" "$rootfs" "$layout/blobs/sha256" '["/usr/local/bin/node-web"]' '[]' 8080/tcp "$PATH_ENV")")
        ;;
      throw-dice)
        mkdir -p "$rootfs/usr/local/bin"
        cat >"$rootfs/usr/local/bin/throw-dice" <<'EOF'
#!/bin/sh
# Waits a moment, then exits with a random status 0..5 (0 is a success).
n=$(od -An -N2 -tu2 /dev/urandom 2>/dev/null | tr -d ' ')
[ -n "$n" ] || n=$RANDOM
sleep "1.$((n % 10))"
roll=$((n % 6))
echo "threw $roll"
exit "$roll"
EOF
        chmod 755 "$rootfs/usr/local/bin/throw-dice"
        entries+=("$(image_manifest "$arch" "$rootfs" "$layout/blobs/sha256" '["/usr/local/bin/throw-dice"]' '[]' "" "$PATH_ENV")")
        ;;
      tour-review)
        mkdir -p "$rootfs/www" "$rootfs/usr/local/bin"
        printf '<!DOCTYPE html>\n<html><body><h1>tour review</h1></body></html>\n' >"$rootfs/www/index.html"
        cat >"$rootfs/usr/local/bin/tour-review" <<'EOF'
#!/bin/sh
echo "tour-review listening on ${PORT:-3000}"
exec httpd -f -v -p "${PORT:-3000}" -h /www
EOF
        chmod 755 "$rootfs/usr/local/bin/tour-review"
        entries+=("$(image_manifest "$arch" "$rootfs" "$layout/blobs/sha256" '["/usr/local/bin/tour-review"]' '[]' 3000/tcp \
          "$(json_array "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" PORT=3000)")")
        ;;
      python)
        local p m
        for p in $PYTHON_PKGS; do fetch "$arch" "$p"; done
        copy_with_libs "$arch" "$rootfs" /usr/bin/python3.11
        ln -s python3.11 "$rootfs/usr/bin/python3"
        local src=$WORK/debs/$arch/x
        mkdir -p "$rootfs/usr/lib/python3.11/lib-dynload"
        tar -C "$src/usr/lib/python3.11" --exclude=./lib-dynload --exclude=./test --exclude=./pydoc_data \
          --exclude=./idlelib --exclude=./tkinter --exclude=./lib2to3 --exclude=./ensurepip --exclude='*.pyc' \
          -cf - . | tar -C "$rootfs/usr/lib/python3.11" -xf -
        for m in $PYTHON_MODULES; do
          copy_with_libs "$arch" "$rootfs" "$(cd "$src" && ls usr/lib/python3.11/lib-dynload/$m.cpython-311-*.so | sed 's|^|/|')"
        done
        entries+=("$(image_manifest "$arch" "$rootfs" "$layout/blobs/sha256" '[]' '["python3"]' "" \
          "$(json_array "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" PYTHONDONTWRITEBYTECODE=1)")")
        ;;
    esac
  done
  write_layout "$file" "$name" "$layout" "${entries[@]}"
}

for spec in "${IMAGES[@]}"; do
  file=${spec%%|*}
  name=${spec#*|}
  case $file in
    nginx_*) kind=nginx ;;
    busybox_*) kind=busybox ;;
    *node-web*) kind=node-web ;;
    *throw-dice*) kind=throw-dice ;;
    *tour-review*) kind=tour-review ;;
    *python*) kind=python ;;
  esac
  build_image "$file" "$name" "$kind"
done
rm -rf "$WORK/layout" "$WORK/rootfs"
echo "$SELF_SUM $ARCHES" >"$OUT/.stamp"
log "done: $(echo $arches) in $OUT"
