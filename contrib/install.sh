#!/bin/sh
# Installs sheep, dog and sheepfs where Debian expects them, with their man pages, shell
# completions, systemd units (sheep@.service, sheepfs@.service), tmpfiles.d entry and
# example configuration; or removes exactly what it installed.
#
#   contrib/install.sh [--prefix DIR] [--destdir DIR] [--no-build] [--docs DIR]
#   contrib/install.sh --uninstall [--prefix DIR] [--destdir DIR]
#
#   --prefix DIR   where the binaries, man pages and completions go (default /usr/local)
#   --destdir DIR  stage everything under DIR (for packaging; env DESTDIR works too);
#                  systemctl and systemd-tmpfiles are not run then
#   --no-build     do not run `cargo build --release --bins`; take the binaries as they are
#                  in target/release (or $CARGO_TARGET_DIR/release)
#   --docs DIR     take man pages and completions from DIR, as written by
#                  `cargo run --release -p xtask -- docs DIR`, instead of generating them
#   --uninstall    remove what the install with the same --prefix and --destdir recorded in
#                  PREFIX/share/sheepdog/install-manifest
#
# Units go to /lib/systemd/system, the tmpfiles.d entry to /usr/lib/tmpfiles.d, whatever the
# prefix. /etc/sheepdog/node0.toml and sheepfs-node0.env are installed only where absent, so
# an operator's configuration is never overwritten; pristine copies go to
# PREFIX/share/doc/sheepdog/examples. Running it again updates in place.
# --uninstall leaves /etc/sheepdog (configuration) and /var/lib/sheepdog (the stores) alone.
set -eu

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'install.sh: %s\n\n' "$*" >&2; usage >&2; exit 2; }
say() { printf '%s\n' "$*"; }

prefix=/usr/local
destdir=${DESTDIR:-}
mode=install
build=yes
docs=

while [ $# -gt 0 ]; do
    case $1 in
        --prefix | --destdir | --docs)
            [ $# -ge 2 ] || usage_error "$1 needs a directory"
            opt=$1 val=$2
            shift 2
            ;;
        --prefix=* | --destdir=* | --docs=*)
            opt=${1%%=*} val=${1#*=}
            shift
            ;;
        --no-build) build=no; shift; continue ;;
        --uninstall) mode=uninstall; shift; continue ;;
        -h | --help) usage; exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
    case $opt in
        --prefix) prefix=$val ;;
        --destdir) destdir=$val ;;
        --docs) docs=$val ;;
    esac
done

# Relative paths are taken from where we were started, before moving to the repository.
absolute() { case $1 in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$(pwd)" "$1" ;; esac; }
case $prefix in
    /*) ;;
    *) die "--prefix must be an absolute path: $prefix" ;;
esac
case $prefix in
    *[!A-Za-z0-9/._+-]*) die "--prefix may hold only letters, digits and / . _ + -: $prefix" ;;
esac
prefix=$(printf '%s' "$prefix" | sed 's|/*$||')
[ -n "$prefix" ] || die "--prefix / is not supported; use /usr"
if [ -n "$destdir" ]; then destdir=$(absolute "$destdir" | sed 's|/*$||'); fi
if [ -n "$docs" ]; then docs=$(absolute "$docs"); fi

cd "$(dirname "$0")/.."
umask 022

bins="sheep dog sheepfs"
units="sheep@.service sheepfs@.service"
unitdir=/lib/systemd/system
tmpfilesconf=/usr/lib/tmpfiles.d/sheepdog.conf
confdir=/etc/sheepdog
examples=$prefix/share/doc/sheepdog/examples
manifest=$prefix/share/sheepdog/install-manifest
# zsh on Debian reads /usr/share/zsh/vendor-completions (packages) and
# /usr/local/share/zsh/site-functions, not PREFIX/share/zsh/vendor-completions.
if [ "$prefix" = /usr ]; then
    zshdir=$prefix/share/zsh/vendor-completions
else
    zshdir=$prefix/share/zsh/site-functions
fi

# Whether to talk to the running systemd: not when staging, nor in a chroot or container
# without it.
live_systemd() {
    [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root to $mode under / (or stage with --destdir DIR)"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
new_manifest=$tmp/manifest
: >"$new_manifest"

# record KIND PATH: f (a file we installed) or d (a directory we created), without DESTDIR.
record() { printf '%s %s\n' "$1" "$2" >>"$new_manifest"; }

# make_dir PATH: creates DESTDIR/PATH and its missing parents, recording each one created
# (except under /etc, which uninstall leaves alone).
make_dir() {
    if [ "$1" = / ]; then
        mkdir -p "$destdir/"
        return 0
    fi
    [ -d "$destdir$1" ] && return 0
    make_dir "$(dirname "$1")"
    mkdir "$destdir$1"
    case $1 in
        /etc | /etc/*) ;;
        *) record d "$1" ;;
    esac
}

# put SOURCE PATH MODE: installs SOURCE as DESTDIR/PATH, replacing it in one rename (a
# running binary is not disturbed), or leaves it be when it is the same already.
put() {
    make_dir "$(dirname "$2")"
    if cmp -s "$1" "$destdir$2"; then
        chmod "$3" "$destdir$2"
    else
        install -m "$3" "$1" "$destdir$2.install-new"
        mv -f "$destdir$2.install-new" "$destdir$2"
        say "installed $destdir$2"
    fi
    record f "$2"
}

# put_config SOURCE PATH: installs SOURCE only if nothing is at DESTDIR/PATH yet. Not
# recorded: once installed, the file is the operator's.
put_config() {
    if [ -e "$destdir$2" ]; then
        say "kept     $destdir$2 (exists; see $examples for the current example)"
    else
        make_dir "$(dirname "$2")"
        install -m 0644 "$1" "$destdir$2"
        say "installed $destdir$2 (example: edit it)"
    fi
}

install_all() {
    target=${CARGO_TARGET_DIR:-target}/release
    if [ "$build" = yes ]; then
        cargo build --release --bins
    fi
    for b in $bins; do
        [ -x "$target/$b" ] || die "$target/$b is missing: build it (cargo build --release --bins) or drop --no-build"
    done
    if [ -z "$docs" ]; then
        docs=$tmp/docs
        cargo run --release -q -p xtask -- docs "$docs"
    fi
    for b in $bins; do
        for f in "man/man1/$b.1" "completions/bash/$b" "completions/zsh/_$b" "completions/fish/$b.fish"; do
            [ -f "$docs/$f" ] || die "$docs/$f is missing (expected from: cargo run -p xtask -- docs DIR)"
        done
    done

    for page in "$docs"/man/man1/*.1; do # sheep.1, dog.1, dog-vdi.1, dog-vdi-create.1...
        page=$(basename "$page")
        gzip -9n -c "$docs/man/man1/$page" >"$tmp/$page.gz"
        put "$tmp/$page.gz" "$prefix/share/man/man1/$page.gz" 0644
    done
    for b in $bins; do
        put "$target/$b" "$prefix/bin/$b" 0755
        put "$docs/completions/bash/$b" "$prefix/share/bash-completion/completions/$b" 0644
        put "$docs/completions/zsh/_$b" "$zshdir/_$b" 0644
        put "$docs/completions/fish/$b.fish" "$prefix/share/fish/vendor_completions.d/$b.fish" 0644
    done
    for u in $units; do
        sed "s|/usr/local/bin/|$prefix/bin/|g" "contrib/systemd/$u" >"$tmp/$u"
        put "$tmp/$u" "$unitdir/$u" 0644
    done
    put contrib/systemd/sheepdog.tmpfiles "$tmpfilesconf" 0644
    put contrib/systemd/node0.toml "$examples/node0.toml" 0644
    put contrib/systemd/sheepfs-node0.env "$examples/sheepfs-node0.env" 0644
    put_config contrib/systemd/node0.toml "$confdir/node0.toml"
    put_config contrib/systemd/sheepfs-node0.env "$confdir/sheepfs-node0.env"

    # The manifest: what this run installed, plus the directories earlier runs created
    # (still ours to remove). A file an earlier run installed and this one did not (a man
    # page of a subcommand that is gone) is removed now.
    make_dir "$(dirname "$manifest")"
    if [ -f "$destdir$manifest" ]; then
        grep '^d ' "$destdir$manifest" >>"$new_manifest" || true
        grep '^f ' "$destdir$manifest" | while IFS= read -r line; do
            if ! grep -qxF "$line" "$new_manifest" && [ -e "$destdir${line#f }" ]; then
                rm -f "$destdir${line#f }"
                say "removed $destdir${line#f } (no longer installed)"
            fi
        done
    fi
    {
        echo "# Installed by contrib/install.sh; removed by contrib/install.sh --uninstall."
        echo "# f: a file it installed; d: a directory it created. Paths are without DESTDIR."
        sort -u "$new_manifest"
    } >"$tmp/manifest.out"
    if ! cmp -s "$tmp/manifest.out" "$destdir$manifest"; then
        install -m 0644 "$tmp/manifest.out" "$destdir$manifest.install-new"
        mv -f "$destdir$manifest.install-new" "$destdir$manifest"
    fi

    if [ -z "$destdir" ] && command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create "$tmpfilesconf" || true
    fi
    if live_systemd; then
        systemctl daemon-reload || true
    fi

    say ""
    say "Installed in $destdir$prefix (the list is in $destdir$manifest)."
    [ -z "$destdir" ] || return 0
    case ":$PATH:" in
        *":$prefix/bin:"*) ;;
        *) say "Note: $prefix/bin is not in PATH." ;;
    esac
    cat <<EOM

Next steps:
  1. Edit $confdir/node0.toml: bind (this host's address) and cluster (the driver).
  2. systemctl enable --now sheep@node0          # logs: journalctl -u sheep@node0
  3. For a new cluster, once all its sheep run: dog -a BIND cluster format -c 3
  4. Edit $confdir/sheepfs-node0.env, then: systemctl enable --now sheepfs@node0
Another store on this host: copy node0.toml to NAME.toml with its own port, then
systemctl enable --now sheep@NAME. Remove with: contrib/install.sh --uninstall --prefix $prefix
EOM
}

uninstall_all() {
    [ -f "$destdir$manifest" ] ||
        die "no manifest at $destdir$manifest: nothing installed with --prefix $prefix${destdir:+ --destdir $destdir}"
    if live_systemd; then
        running=$(systemctl list-units --plain --no-legend --state=active,activating,deactivating,reloading \
            'sheep@*' 'sheepfs@*' | awk '{print $1}' | tr '\n' ' ')
        if [ -n "$running" ]; then
            die "still running: $running- stop them first (systemctl stop ...; a whole cluster: dog cluster shutdown)"
        fi
        # Enabled instances point at the templates: disable them while the templates exist.
        enabled=$(find /etc/systemd/system -path '*.wants/*' \( -name 'sheep@*.service' -o -name 'sheepfs@*.service' \) \
            -exec basename {} \; 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "$enabled" ]; then
            say "disabling $enabled"
            # shellcheck disable=SC2086 # one word per unit
            systemctl disable $enabled || true
        fi
    fi
    grep '^f ' "$destdir$manifest" | while IFS= read -r line; do
        path=${line#f }
        if [ -e "$destdir$path" ] || [ -L "$destdir$path" ]; then
            rm -f "$destdir$path"
            say "removed $destdir$path"
        fi
    done
    grep '^d ' "$destdir$manifest" | sort -r >"$tmp/dirs" || true
    rm -f "$destdir$manifest"
    # Deepest first (reverse order puts /a/b before /a); a directory that holds anything
    # else stays.
    while IFS= read -r line; do
        rmdir "$destdir${line#d }" 2>/dev/null || true
    done <"$tmp/dirs"
    if live_systemd; then
        systemctl daemon-reload || true
    fi
    say ""
    say "Uninstalled from $destdir$prefix. Left alone: $destdir$confdir (configuration) and"
    say "$destdir/var/lib/sheepdog (the stores); remove them by hand if they are no longer wanted."
}

case $mode in
    install) install_all ;;
    uninstall) uninstall_all ;;
esac
