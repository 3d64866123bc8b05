# Sourced by the set-up scripts (not run on its own).
#   ensure_apt_packages TAG PKG...
# installs the Debian packages that are missing when run as root; otherwise prints the exact
# apt-get command and fails. TAG prefixes its lines ("[setup]").
ensure_apt_packages() {
    local tag=$1
    shift
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "[$tag] MISSING system packages: ${missing[*]}" >&2
        echo "[$tag] run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        return 1
    fi
    echo "[$tag] installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
