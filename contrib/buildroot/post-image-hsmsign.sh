#!/usr/bin/env bash
# Buildroot post-image script: sign the images in BINARIES_DIR with a key that
# stays in a PKCS#11 token, through the same `hsmsign` command the Yocto layer uses.
#
# Buildroot calls post-image scripts as  SCRIPT BINARIES_DIR [BR2_ROOTFS_POST_SCRIPT_ARGS...]
# In the defconfig (one script may follow another, separated by spaces):
#   BR2_ROOTFS_POST_IMAGE_SCRIPT="board/acme/post-image.sh /path/to/post-image-hsmsign.sh"
#   BR2_ROOTFS_POST_SCRIPT_ARGS="rootfs.ext4 Image"       # files to sign (default below)
#
# Everything else comes from the environment of `make` (never from the
# defconfig, which is often published):
#   HSM_PKCS11_URI        key for detached signatures, manifest and dm-verity (required),
#                         e.g. pkcs11:token=acme-prod;object=rootfs-2026?pin-source=file:/run/secrets/hsm-pin
#   HSMSIGN_PIN_ENV       name of a variable holding the PIN, if the URI has no pin-source
#   HSMSIGN_MODE          production (default) or development
#   HSMSIGN_FILES         files to sign, when BR2_ROOTFS_POST_SCRIPT_ARGS is used by other scripts
#   HSMSIGN_CERT          signer certificate (PEM): enables the signed MANIFEST, and dm-verity
#   HSMSIGN_VERITY_IMAGE  a filesystem image in BINARIES_DIR to protect with dm-verity
#                         (writes IMAGE.verity, IMAGE.roothash, IMAGE.roothash.p7s)
#   HSMSIGN_FIT_IMAGES    FIT images in BINARIES_DIR to sign in place (e.g. "image.itb")
#   HSM_PKCS11_URI_FITIMAGE, HSMSIGN_FIT_KEY_NAME   key and key-name-hint for those FITs
#   HSMSIGN_CMD           how to run hsmsign (default: hsmsign; e.g. "python3 -m hsmsign")
#   HSMSIGN_LEDGER        append every signature to this ledger file
#
# Exit status: hsmsign's (2 configuration, 3 token, 4 policy, 5 signing, ...);
# Buildroot stops the build on any failure. No PIN is ever on a command line.
set -euo pipefail

die() {
    printf 'post-image-hsmsign: error: %s\n' "$1" >&2
    exit "${2:-2}"
}
say() { printf 'post-image-hsmsign: %s\n' "$*" >&2; }

binaries_dir=${1:-${BINARIES_DIR:-}}
[ -n "$binaries_dir" ] || die "usage: $0 BINARIES_DIR [FILE...] (Buildroot passes BINARIES_DIR)"
[ -d "$binaries_dir" ] || die "$binaries_dir is not a directory"
shift || true

read -r -a hsmsign <<< "${HSMSIGN_CMD:-hsmsign}"
command -v "${hsmsign[0]}" >/dev/null || die "${hsmsign[0]} not found: pip install hsmsign, or set HSMSIGN_CMD"
[ -n "${HSM_PKCS11_URI:-}" ] || die "HSM_PKCS11_URI is not set: export the key's PKCS#11 URI before 'make'"

cd "$binaries_dir"

# 1. FIT images, signed in place (U-Boot verifies them with the key in its control DTB)
fit_images=()
read -r -a fit_images <<< "${HSMSIGN_FIT_IMAGES:-}"
for fit in "${fit_images[@]}"; do
    [ -f "$fit" ] || die "HSMSIGN_FIT_IMAGES names $fit, which is not in $binaries_dir"
    args=(fit sign --uri "${HSM_PKCS11_URI_FITIMAGE:-$HSM_PKCS11_URI}")
    if [ -n "${HSMSIGN_FIT_KEY_NAME:-}" ]; then
        args+=(--key-name "$HSMSIGN_FIT_KEY_NAME")
    fi
    say "signing FIT $fit"
    "${hsmsign[@]}" "${args[@]}" "$fit"
done

# 2. dm-verity hash tree and the root hash signature the kernel checks
if [ -n "${HSMSIGN_VERITY_IMAGE:-}" ]; then
    [ -n "${HSMSIGN_CERT:-}" ] || die "HSMSIGN_VERITY_IMAGE needs HSMSIGN_CERT (the certificate in the signature)"
    image=$HSMSIGN_VERITY_IMAGE
    [ -f "$image" ] || die "HSMSIGN_VERITY_IMAGE names $image, which is not in $binaries_dir"
    say "dm-verity for $image"
    "${hsmsign[@]}" verity sign --uri "$HSM_PKCS11_URI" --cert "$HSMSIGN_CERT" --image "$image" \
        --hash-tree "$image.verity" --root-hash-output "$image.roothash" --output "$image.roothash.p7s"
fi

# 3. a detached signature per file (openssl dgst -sha256 -verify PUB -signature FILE.sig FILE)
files=("$@")
if [ ${#files[@]} -eq 0 ] && [ -n "${HSMSIGN_FILES:-}" ]; then
    read -r -a files <<< "$HSMSIGN_FILES"
fi
if [ ${#files[@]} -eq 0 ]; then
    for candidate in rootfs.ext2 rootfs.ext4 rootfs.squashfs rootfs.erofs rootfs.ubi rootfs.tar \
        Image zImage uImage bzImage sdcard.img disk.img; do
        [ -f "$candidate" ] && files+=("$candidate")
    done
    files+=("${fit_images[@]}")
fi
[ ${#files[@]} -gt 0 ] || die "nothing to sign in $binaries_dir (name the files in BR2_ROOTFS_POST_SCRIPT_ARGS)"
signed=()
for f in "${files[@]}"; do
    [ -f "$f" ] || die "$f is not in $binaries_dir"
    "${hsmsign[@]}" sign --uri "$HSM_PKCS11_URI" --output "$f.sig" "$f"
    signed+=("$f" "$f.sig")
done

# 4. one signed manifest over everything above (hsmsign manifest verify --cert CERT MANIFEST)
if [ -n "${HSMSIGN_CERT:-}" ]; then
    if [ -n "${HSMSIGN_VERITY_IMAGE:-}" ]; then
        signed+=("$HSMSIGN_VERITY_IMAGE.verity" "$HSMSIGN_VERITY_IMAGE.roothash" "$HSMSIGN_VERITY_IMAGE.roothash.p7s")
    fi
    "${hsmsign[@]}" manifest --uri "$HSM_PKCS11_URI" --cert "$HSMSIGN_CERT" --output MANIFEST "${signed[@]}"
fi
say "signed ${#files[@]} file(s) in $binaries_dir"
