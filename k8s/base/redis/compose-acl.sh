#!/bin/sh
# Writes Redis's ACL file from the per-role rules (ConfigMap voicefleet-redis-acl: one line of
# rules per role, derived from the fleet's key naming by voicefleet/deploy_names.py) and each
# role's user name and password (Secrets voicefleet-redis-<role>, mounted as files). Passwords
# are stored as SHA-256 digests and never appear on a command line or in the environment.
#   compose-acl.sh RULES_DIR SECRETS_DIR OUT_FILE
# SECRETS_DIR/<role>/username and SECRETS_DIR/<role>/password for gateway, stt, llm, tts, and
# SECRETS_DIR/admin/password for the `admin` user (every command; operations and the probe).
# The `default` user (a client that does not authenticate) is switched off.
set -eu
rules=$1 secrets=$2 out=$3
umask 077
tmp="$out.tmp"
: > "$tmp"

digest() {
  # The password file's exact bytes: a trailing newline would be part of the password.
  sha256sum < "$1" | cut -d' ' -f1
}

check_name() {
  case "$1" in
    ''|*[!A-Za-z0-9_-]*) echo "compose-acl: bad Redis user name '$1' for $2" >&2; exit 1 ;;
  esac
}

for role in gateway stt llm tts; do
  for part in username password; do
    if [ ! -s "$secrets/$role/$part" ]; then
      echo "compose-acl: no $part for the $role Redis user ($secrets/$role/$part)" >&2
      exit 1
    fi
  done
  name=$(cat "$secrets/$role/username")
  check_name "$name" "$role"
  [ "$name" != admin ] && [ "$name" != default ] || { echo "compose-acl: $role may not be $name" >&2; exit 1; }
  printf 'user %s reset on #%s %s\n' "$name" "$(digest "$secrets/$role/password")" \
    "$(cat "$rules/$role")" >> "$tmp"
done
if [ ! -s "$secrets/admin/password" ]; then
  echo "compose-acl: no password for the admin Redis user ($secrets/admin/password)" >&2
  exit 1
fi
printf 'user admin reset on #%s ~* &* +@all\n' "$(digest "$secrets/admin/password")" >> "$tmp"
printf 'user default reset off resetkeys resetchannels -@all\n' >> "$tmp"
mv "$tmp" "$out"
