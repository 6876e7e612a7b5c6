#!/bin/sh
# Prints the package version: a tag vX.Y.Z as X.Y.Z, else 0.0.0+g<commit>
# (0.0.0 outside a git checkout).
d=$(git describe --tags --always --match 'v[0-9]*' 2>/dev/null)
case "$d" in
v[0-9]*) echo "${d#v}" ;;
?*) echo "0.0.0+g$d" ;;
*) echo 0.0.0 ;;
esac
