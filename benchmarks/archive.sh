# Sourced by the benchmark chains: carry finished runs from one session's machine to the next.
# A session's machine keeps no bench/ folder, so a chain longer than a session packs the records of
# its finished runs (config, spec, result, metrics; no checkpoints) into an archive that is
# committed, and unpacks it at its start: the run engine then reuses those runs and trains only
# what is missing. Files already in OUT win over the archive's.
#   source benchmarks/archive.sh; unpack_runs OUT ARCHIVE; start_packer OUT ARCHIVE; ...; pack_runs OUT ARCHIVE

unpack_runs() {  # unpack_runs OUT ARCHIVE
  mkdir -p "$1"
  if [[ -f $2 ]]; then tar -xJf "$2" -C "$1" --skip-old-files; fi
}

pack_runs() {  # pack_runs OUT ARCHIVE: every run with a result (one still training has none yet)
  local list tmp
  list=$(mktemp)
  (cd "$1" && find . -path '*/runs/*' -name result.json -printf '%h\n' | sort) > "$list"
  mkdir -p "$(dirname "$2")"
  # Its own temporary file: the periodic packer and a stage's pack may run at once; each mv is atomic.
  tmp=$(mktemp "$2.XXXXXX")
  tar -cJf "$tmp" -C "$1" --exclude=checkpoints --exclude=.lock -T "$list" && mv "$tmp" "$2"
  rm -f "$list" "$tmp"
}

start_packer() {  # start_packer OUT ARCHIVE: also pack every 10 minutes, until the calling script exits
  (while sleep 600; do pack_runs "$1" "$2"; done) &
  _packer=$!
  trap 'kill $_packer 2>/dev/null' EXIT
}
