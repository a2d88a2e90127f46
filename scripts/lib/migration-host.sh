# Shell helpers for scripts that run modevisord hosts which migrate VMs to
# each other (the migration demo, the cross-mode migration test on both of
# its sides).  Source it; it defines functions only.

# A loopback TCP port nobody listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# new_cluster_secret FILE: 32 random bytes, hex, readable by the owner only.
new_cluster_secret() {
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$1"
  chmod 600 "$1"
}

# write_migration_host_yaml DIR NAME LISTEN SECRET PLUGIN_DIR PEER_NAME PEER_ADDRESS
# A host whose control socket, state and logs live in DIR, listening for
# migrations on LISTEN (address:port), with one named peer.
write_migration_host_yaml() {
  local dir=$1 name=$2 listen=$3 secret=$4 plugins=$5 peer=$6 peer_address=$7
  mkdir -p "$dir"
  cat > "$dir/host.yaml" <<YAML
name: $name
control_socket: $dir/control.sock
state_dir: $dir/state
log_dir: $dir/logs
plugin_dirs: [$plugins]
migration:
  listen: $listen
  secret_file: $secret
peers:
  $peer: $peer_address
YAML
}

# write_ticker_vm_yaml FILE BUILD_DIR MIB STAMP_MIB RATE: the stamper guest
# as VM "ticker", printing "tick N" every 100 ms while it stamps STAMP_MIB of
# its RAM at RATE pages per ms, on a CPU model every host presents leaf for leaf.
write_ticker_vm_yaml() {
  local file=$1 build=$2 mib=$3 stamp=$4 rate=$5
  local khz
  khz=$(awk '/cpu MHz/ {printf "%d\n", $4*1000; exit}' /proc/cpuinfo)
  cat > "$file" <<YAML
name: ticker
guest:
  os: other-32
  kernel: $build/guests/stamper.elf
  cmdline: "mib=$stamp rate=$rate every=100 khz=${khz:-1000000}"
memory: ${mib}MiB
cpu_model: portable-32
YAML
}
