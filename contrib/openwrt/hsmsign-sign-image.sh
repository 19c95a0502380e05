#!/usr/bin/env bash
# Sign OpenWRT images (build tree or Image Builder output) with a key that stays in
# a PKCS#11 token, through the same `hsmsign` command the Yocto layer uses.
#
#   hsmsign-sign-image.sh [--fit FIT]... [--manifest] TARGET-DIR|IMAGE...
#
# Run it after `make` (or `make image PROFILE=...` in the Image Builder), e.g.
#   contrib/openwrt/hsmsign-sign-image.sh --manifest bin/targets/mediatek/filogic
# A directory stands for the images in it (*.bin, *.itb, *.img, *.img.gz, *.ubi,
# *.trx, *.tar.gz). Each gets a detached signature IMAGE.sig, which
#   openssl dgst -sha256 -verify signer-pub.pem -signature IMAGE.sig IMAGE
# checks. --fit FIT also signs a FIT image in place first (configuration
# signatures that U-Boot checks, key-name-hint $HSMSIGN_FIT_KEY_NAME); give it a
# FIT as mkimage wrote it, before sysupgrade metadata is appended.
# --manifest writes DIR/MANIFEST + MANIFEST.p7s over all of them (needs HSMSIGN_CERT;
# check with: hsmsign manifest verify --cert CERT DIR/MANIFEST).
#
# Environment (nothing secret on the command line, nothing in .config):
#   HSM_PKCS11_URI           the signing key, e.g.
#                            pkcs11:token=acme-prod;object=owrt-2026?pin-source=file:/run/secrets/hsm-pin
#   HSM_PKCS11_URI_FITIMAGE  key for --fit (default: HSM_PKCS11_URI)
#   HSMSIGN_FIT_KEY_NAME     key-name-hint of the FIT signature nodes to fill
#   HSMSIGN_CERT             signer certificate (PEM) for --manifest
#   HSMSIGN_PIN_ENV, HSMSIGN_MODE, HSMSIGN_LEDGER, HSM_PKCS11_MODULE: as for hsmsign
#   HSMSIGN_CMD              how to run hsmsign (default: hsmsign)
#
# This complements OpenWRT's own usign/ucert image metadata; it does not replace it.
set -euo pipefail
shopt -s nullglob

die() {
    printf 'hsmsign-sign-image: error: %s\n' "$1" >&2
    exit "${2:-2}"
}
usage() {
    sed -n '4,5p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

fits=()
manifest=0
targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --fit) [ $# -ge 2 ] || usage; fits+=("$2"); shift 2 ;;
        --fit=*) fits+=("${1#--fit=}"); shift ;;
        --manifest) manifest=1; shift ;;
        -h | --help) usage ;;
        --) shift; targets+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || usage

read -r -a hsmsign <<< "${HSMSIGN_CMD:-hsmsign}"
command -v "${hsmsign[0]}" >/dev/null || die "${hsmsign[0]} not found: pip install hsmsign, or set HSMSIGN_CMD"
[ -n "${HSM_PKCS11_URI:-}" ] || die "HSM_PKCS11_URI is not set: export the key's PKCS#11 URI"
if [ "$manifest" = 1 ] && [ -z "${HSMSIGN_CERT:-}" ]; then
    die "--manifest needs HSMSIGN_CERT (make one with 'hsmsign cert' or get one from your CA)"
fi

for fit in "${fits[@]}"; do
    [ -f "$fit" ] || die "$fit: no such file"
    args=(fit sign --uri "${HSM_PKCS11_URI_FITIMAGE:-$HSM_PKCS11_URI}")
    if [ -n "${HSMSIGN_FIT_KEY_NAME:-}" ]; then
        args+=(--key-name "$HSMSIGN_FIT_KEY_NAME")
    fi
    "${hsmsign[@]}" "${args[@]}" "$fit"
done

images=()
manifest_dir=
for t in "${targets[@]}"; do
    if [ -d "$t" ]; then
        manifest_dir=${manifest_dir:-$t}
        for f in "$t"/*.bin "$t"/*.itb "$t"/*.img "$t"/*.img.gz "$t"/*.ubi "$t"/*.trx "$t"/*.tar.gz; do
            images+=("$f")
        done
    elif [ -f "$t" ]; then
        manifest_dir=${manifest_dir:-$(dirname "$t")}
        images+=("$t")
    else
        die "$t: no such file or directory"
    fi
done
[ ${#images[@]} -gt 0 ] || die "no images found in: ${targets[*]}"

signed=()
for f in "${images[@]}"; do
    "${hsmsign[@]}" sign --uri "$HSM_PKCS11_URI" --output "$f.sig" "$f"
    signed+=("$f" "$f.sig")
done

if [ "$manifest" = 1 ]; then
    "${hsmsign[@]}" manifest --uri "$HSM_PKCS11_URI" --cert "$HSMSIGN_CERT" \
        --base "$manifest_dir" --output "$manifest_dir/MANIFEST" "${signed[@]}"
fi
printf 'hsmsign-sign-image: signed %d image(s)\n' "${#images[@]}" >&2
