#!/usr/bin/env bash
# scripts/tune.sh — check or apply the kernel settings wspush needs for N connections.
#
# What it is for: say, setting by setting, whether this machine caps how many
# connections one wspush process can hold (--check, the default), and as root
# install tuning/sysctl.conf and tuning/limits.conf scaled to N (--apply).
# What it must never do: lower a limit the machine already has higher, touch
# anything but /etc/sysctl.d/90-wspush.conf and
# /etc/security/limits.d/90-wspush.conf, or fail half-way silently: a setting
# the kernel refuses (read-only /proc/sys in a container) is reported by name.
#
# Usage: scripts/tune.sh [--check | --apply | --print] [--connections N] [--user NAME]
#   --check          (default) current vs recommended, and what caps N
#   --apply          as root: write and load the sysctl file, install limits.conf
#   --print          print the sysctl file --apply would write (no root needed)
#   --connections N  target connections for one process (default 1000000)
#   --user NAME      service user for limits.conf (default wspush)
# Exit: 0 nothing caps N (or applied), 1 something caps N (check) or a setting
# could not be applied, 2 usage error or not root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sysctl_src="$here/../tuning/sysctl.conf"
limits_src="$here/../tuning/limits.conf"
sysctl_dest=/etc/sysctl.d/90-wspush.conf
limits_dest=/etc/security/limits.d/90-wspush.conf

# The same figures as src/limits.rs and the comments in tuning/sysctl.conf.
reserved_base=64            # descriptors wspush keeps for non-connections (plus 16 per reactor)
listen_backlog=4096         # what each wspush reactor passes to listen() (src/reactor/listener.rs BACKLOG)
kernel_bytes_per_conn=3712  # slab per idle connection: tcp_sock + inode + file + dentry + epoll
user_bytes_per_conn=256     # wspush's own per idle connection (design goal)
tcp_mem_bytes_per_conn=4096 # socket memory one recipient pins while a broadcast is in flight

mode=check
connections=1000000
service_user=wspush

usage() {
    sed -n '/^# Usage:/,/^# Exit:/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --check) mode=check ;;
        --apply) mode=apply ;;
        --print) mode=print ;;
        --connections)
            [ $# -ge 2 ] || usage
            connections="$2"
            shift
            ;;
        --user)
            [ $# -ge 2 ] || usage
            service_user="$2"
            shift
            ;;
        -h | --help) usage ;;
        *)
            echo "tune.sh: unknown argument: $1" >&2
            usage
            ;;
    esac
    shift
done

if ! [[ "$connections" =~ ^[1-9][0-9]{0,11}$ ]]; then
    echo "tune.sh: --connections needs a positive integer (got '$connections')" >&2
    exit 2
fi
if ! [[ "$service_user" =~ ^[a-z_][a-z0-9_-]*$ ]]; then
    echo "tune.sh: --user needs a plain user name (got '$service_user')" >&2
    exit 2
fi
n=$connections

page_size=$(getconf PAGESIZE 2>/dev/null || echo 4096)

# --- recommendations for N --------------------------------------------------

# Descriptors for N connections plus the reserve of up to 250 reactors.
nofile_needed=$((n + 4096))
# A file-max for the whole machine: N, 10% for everything else, and a floor.
file_max_needed=$((n + n / 10 + 65536))
# tcp_mem, in pages: low 0.75 N, pressure N, high 1.5 N pages of 4 KiB.
tcp_mem_pressure=$((n * tcp_mem_bytes_per_conn / page_size))
tcp_mem_low=$((tcp_mem_pressure * 3 / 4))
tcp_mem_high=$((tcp_mem_pressure * 3 / 2))

# --- helpers ----------------------------------------------------------------

# Current value of a sysctl key, whitespace squeezed; empty if it does not exist.
current() {
    local path="/proc/sys/${1//.//}"
    [ -r "$path" ] || return 0
    tr -s ' \t' '  ' <"$path" 2>/dev/null || true
}

# The value tuning/sysctl.conf gives a key.
file_value() {
    sed -n "s/^-\{0,1\}$(printf '%s' "$1" | sed 's/\./\\./g')[[:space:]]*=[[:space:]]*//p" "$sysctl_src" |
        tr -s ' \t' '  '
}

max() { if [ "$1" -ge "$2" ]; then echo "$1"; else echo "$2"; fi; }
min() { if [ "$1" -le "$2" ]; then echo "$1"; else echo "$2"; fi; }

# Human size of a byte count.
human() {
    awk -v b="$1" 'BEGIN {
        split("B KiB MiB GiB TiB", u); i = 1
        while (b >= 1024 && i < 5) { b /= 1024; i++ }
        printf(i == 1 ? "%d %s" : "%.1f %s", b, u[i])
    }'
}

# The value --apply writes for a key: the file's, scaled to N, never lowering
# a limit the machine already has higher.
target_value() {
    local key="$1" want cur
    want="$(file_value "$key")"
    cur="$(current "$key")"
    case "$key" in
        fs.nr_open)
            want=$(max "$want" "$nofile_needed")
            [ -n "$cur" ] && want=$(max "$want" "$cur")
            ;;
        fs.file-max)
            want=$(max "$want" "$file_max_needed")
            [ -n "$cur" ] && want=$(max "$want" "$cur")
            ;;
        net.core.somaxconn | net.ipv4.tcp_max_syn_backlog | net.core.netdev_max_backlog)
            [ -n "$cur" ] && want=$(max "$want" "$cur")
            ;;
        net.netfilter.nf_conntrack_max)
            want=$(max "$want" "$((n + n / 10))")
            [ -n "$cur" ] && want=$(max "$want" "$cur")
            ;;
        net.ipv4.tcp_mem)
            local f c i out=""
            read -r -a f <<<"$want"
            local r=("$tcp_mem_low" "$tcp_mem_pressure" "$tcp_mem_high")
            read -r -a c <<<"${cur:-0 0 0}"
            for i in 0 1 2; do
                out="$out $(max "$(max "${f[$i]}" "${r[$i]}")" "${c[$i]:-0}")"
            done
            want="${out# }"
            ;;
        net.ipv4.tcp_rmem | net.ipv4.tcp_wmem)
            # Small min and default from the file; keep a larger max for throughput.
            local f c
            read -r -a f <<<"$want"
            read -r -a c <<<"${cur:-0 0 0}"
            want="${f[0]} ${f[1]} $(max "${f[2]}" "${c[2]:-0}")"
            ;;
        net.ipv4.tcp_fin_timeout)
            [ -n "$cur" ] && want=$(min "$want" "$cur")
            ;;
        net.ipv4.ip_local_port_range)
            local f c
            read -r -a f <<<"$want"
            read -r -a c <<<"${cur:-${f[0]} ${f[1]}}"
            want="$(min "${f[0]}" "${c[0]}") $(max "${f[1]}" "${c[1]}")"
            ;;
    esac
    printf '%s' "$want"
}

# tuning/sysctl.conf with every value replaced by its target_value.
render_sysctl() {
    echo "# Installed by scripts/tune.sh --apply --connections $n from tuning/sysctl.conf."
    echo "# Values are the file's, scaled to $n connections, never below this machine's."
    local line key prefix
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ "$line" =~ ^(-?)([a-z0-9_.-]+)[[:space:]]*= ]]; then
            prefix="${BASH_REMATCH[1]}"
            key="${BASH_REMATCH[2]}"
            echo "$prefix$key = $(target_value "$key")"
        else
            echo "$line"
        fi
    done <"$sysctl_src"
}

# The nofile limit for limits.conf: the file's, at least N + reserve.
limits_nofile() {
    max "$(awk '$3 == "nofile" && $1 !~ /^#/ { print $4; exit }' "$limits_src")" "$nofile_needed"
}

# tuning/limits.conf for the service user with nofile set to $1.
render_limits() {
    awk -v user="$service_user" -v nofile="$1" '
        $3 == "nofile" && $1 !~ /^#/ { printf("%-11s %-7s %-8s %s\n", user, $2, $3, nofile); next }
        { print }' "$limits_src"
}

# --- check ------------------------------------------------------------------

caps=0
row() { # verdict key current recommended note
    printf '%-7s %-31s %-24s %-24s %s\n' "$1" "$2" "$3" "$4" "$5"
    [ "$1" = CAPS ] && caps=1
    return 0
}

check_one() {
    local key="$1" cur rec verdict note
    cur="$(current "$key")"
    rec="$(target_value "$key")"
    if [ -z "$cur" ]; then
        case "$key" in
            net.netfilter.nf_conntrack_max) row ok "$key" "(not loaded)" "$rec" "conntrack not loaded: tracks nothing, caps nothing" ;;
            *) row "?" "$key" "(unreadable)" "$rec" "cannot read /proc/sys/${key//.//}: skipped" ;;
        esac
        return 0
    fi
    verdict=ok
    case "$key" in
        fs.nr_open)
            note="caps one process at ~$((cur - reserved_base)) connections"
            [ "$cur" -lt "$nofile_needed" ] && verdict=CAPS
            ;;
        fs.file-max)
            note="caps the whole machine at ~$((cur - reserved_base)) open files"
            [ "$cur" -lt "$nofile_needed" ] && verdict=CAPS
            [ "$verdict" = ok ] && [ "$cur" -lt "$file_max_needed" ] && verdict=low &&
                note="$note; little left for the rest of the machine"
            ;;
        net.core.somaxconn)
            note="clamps every listen backlog (wspush asks $listen_backlog per reactor)"
            if [ "$cur" -lt "$listen_backlog" ]; then verdict=CAPS; elif [ "$cur" -lt "${rec%% *}" ]; then verdict=low; fi
            ;;
        net.ipv4.tcp_max_syn_backlog)
            note="half-open connections per listener during a reconnect storm"
            if [ "$cur" -lt "$listen_backlog" ]; then verdict=CAPS; elif [ "$cur" -lt "$rec" ]; then verdict=low; fi
            ;;
        net.core.netdev_max_backlog)
            note="packets queued per CPU in a SYN/ACK storm"
            [ "$cur" -lt "$rec" ] && verdict=low
            ;;
        net.ipv4.tcp_syncookies)
            note="answer SYN-queue overflow with cookies instead of dropping"
            [ "$cur" != 1 ] && verdict=low
            ;;
        net.ipv4.tcp_mem)
            local high
            high=$(echo "$cur" | awk '{ print $3 }')
            note="high $(human $((high * page_size))): a broadcast reaches ~$((high * page_size / tcp_mem_bytes_per_conn)) connections before the kernel refuses socket memory"
            [ "$high" -lt "$tcp_mem_pressure" ] && verdict=CAPS
            ;;
        net.ipv4.tcp_rmem | net.ipv4.tcp_wmem)
            local def
            def=$(echo "$cur" | awk '{ print $2 }')
            note="default $(human "$def") per socket: $n stalled sockets may queue $(human $((n * def)))"
            [ "$def" -gt "$(echo "$rec" | awk '{ print $2 }')" ] && verdict=costly
            ;;
        net.ipv4.tcp_fin_timeout)
            note="$n closes hold ~$(human $((n * 256))) for ${cur} s"
            [ "$cur" -gt "$rec" ] && verdict=slow
            ;;
        net.ipv4.tcp_tw_reuse)
            note="outgoing connections only (load generators, proxies)"
            [ "$cur" != 1 ] && verdict=differs
            ;;
        net.ipv4.ip_local_port_range)
            local lo hi
            read -r lo hi <<<"$cur"
            note="$((hi - lo + 1)) outgoing connections per source address (load generators)"
            [ "$cur" != "$rec" ] && verdict=differs
            ;;
        net.netfilter.nf_conntrack_max)
            note="conntrack is loaded: caps the machine at $cur tracked connections"
            [ "$cur" -lt "$n" ] && verdict=CAPS
            ;;
    esac
    row "$verdict" "$key" "$cur" "$rec" "$note"
}

do_check() {
    echo "wspush capacity check for $n connections in one process (page size $page_size)"
    echo
    row verd. setting current recommended why
    local key
    while IFS= read -r key; do
        check_one "$key"
    done < <(sed -n 's/^-\{0,1\}\([a-z0-9_.-]*\)[[:space:]]*=.*/\1/p' "$sysctl_src")
    local maps
    maps="$(current vm.max_map_count)"
    row info vm.max_map_count "${maps:-(unreadable)}" "(unchanged)" "not a cap: wspush maps no memory per connection"

    local soft hard verdict
    soft=$(ulimit -Sn)
    hard=$(ulimit -Hn)
    verdict=ok
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile_needed" ]; then verdict=CAPS; fi
    row "$verdict" "ulimit -n (this shell)" "soft $soft hard $hard" "$nofile_needed" \
        "wspush raises soft to hard at start-up; hard $hard caps it at ~$(
            [ "$hard" = unlimited ] && echo unlimited || echo $((hard - reserved_base))
        ) connections (systemd: LimitNOFILE=)"

    echo
    local kernel user mem_total mem_high
    kernel=$((n * kernel_bytes_per_conn))
    mem_high=$(target_value net.ipv4.tcp_mem | awk '{ print $3 }')
    user=$((n * user_bytes_per_conn))
    mem_total=$(awk '/^MemTotal:/ { printf("%.0f\n", $2 * 1024) }' /proc/meminfo 2>/dev/null || echo 0)
    echo "memory for $n idle connections: kernel ~$(human "$kernel") ($kernel_bytes_per_conn B each)" \
        "+ wspush ~$(human "$user") ($user_bytes_per_conn B each)" \
        "+ up to $(human $((mem_high * page_size))) tcp_mem for data in flight;" \
        "this machine has $(human "${mem_total:-0}")"
    if [ "${mem_total:-0}" -gt 0 ] && [ $((kernel + user + tcp_mem_pressure * page_size)) -gt "$mem_total" ]; then
        echo "CAPS    memory: $n connections need more than this machine's RAM; spread them over a cluster"
        caps=1
    fi
    if [ "$caps" -ne 0 ]; then
        echo "some settings cap $n connections: run 'sudo scripts/tune.sh --apply --connections $n'" \
            "(in a container, set sysctls on the host)"
        return 1
    fi
    echo "nothing here caps $n connections"
}

# --- apply ------------------------------------------------------------------

do_apply() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "tune.sh: --apply must run as root: it writes $sysctl_dest and $limits_dest" \
            "and loads kernel settings. Run: sudo $0 --apply --connections $n" \
            "(or --check / --print to look without changing anything)" >&2
        exit 2
    fi
    local failed=0 key value line
    apply_tmp="$(mktemp)"
    trap 'rm -f "$apply_tmp"' EXIT
    local tmp="$apply_tmp"

    render_sysctl >"$tmp"
    install_if_changed "$tmp" "$sysctl_dest"
    # Load key by key (what `sysctl -p` does) so each refusal is named: in a
    # container most of /proc/sys is read-only and belongs to the host.
    while IFS= read -r line; do
        [[ "$line" =~ ^(-?)([a-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*)$ ]] || continue
        key="${BASH_REMATCH[2]}"
        value="${BASH_REMATCH[3]}"
        if [ ! -e "/proc/sys/${key//.//}" ]; then
            [ -n "${BASH_REMATCH[1]}" ] && { echo "skipped  $key (not present on this kernel)"; continue; }
            echo "FAILED   $key: no such setting on this kernel" >&2
            failed=1
            continue
        fi
        if [ "$(current "$key")" = "$(echo "$value" | tr -s ' \t' '  ')" ]; then
            echo "ok       $key = $value (already)"
        elif sysctl -q -w "$key=$value" >/dev/null 2>&1; then
            echo "set      $key = $value"
        else
            echo "FAILED   $key = $value: the kernel refused (read-only /proc/sys? set it on the host)" >&2
            failed=1
        fi
    done <"$sysctl_dest"

    # A nofile above fs.nr_open makes pam_limits fail the whole session, so
    # never install more than the kernel in force allows.
    local nofile nr_open
    nofile="$(limits_nofile)"
    nr_open="$(current fs.nr_open)"
    if [ -n "$nr_open" ] && [ "$nofile" -gt "$nr_open" ]; then
        echo "FAILED   nofile $nofile is above fs.nr_open $nr_open in force; installing $nr_open" >&2
        nofile="$nr_open"
        failed=1
    fi
    render_limits "$nofile" >"$tmp"
    install_if_changed "$tmp" "$limits_dest"
    echo "limits.conf applies to new PAM sessions of '$service_user'; a systemd unit needs" \
        "LimitNOFILE=$nofile (tuning/wspush.service)"
    if [ "$failed" -ne 0 ]; then
        echo "tune.sh: some settings were not applied (see FAILED above); $sysctl_dest" \
            "still loads them at the next boot" >&2
        return 1
    fi
}

# Installs $1 as $2 (mode 0644) unless $2 already has exactly that content.
install_if_changed() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        echo "unchanged $2"
    else
        install -D -m 0644 "$1" "$2"
        echo "wrote    $2"
    fi
}

case "$mode" in
    check) do_check ;;
    print) render_sysctl ;;
    apply) do_apply ;;
esac
