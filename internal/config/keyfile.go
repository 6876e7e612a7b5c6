package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/librecast/lcast/peer"
)

// Errors of a private key file that others could read or change, as ssh
// refuses such a key.
var (
	ErrKeyFileMode  = errors.New("is accessible by group or others")
	ErrKeyFileOwner = errors.New("is owned by another user, who can read or replace it")
)

// ReadKeyFile reads the private key in the file at path, which must be a
// regular file owned by root or this process's user with no access for
// group or others. Its mode and owner are read from the open file, so a
// rename between the check and the read changes nothing.
func ReadKeyFile(path string) (peer.Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return peer.Key{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return peer.Key{}, err
	}
	if !fi.Mode().IsRegular() {
		return peer.Key{}, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return peer.Key{}, fmt.Errorf("%s %w (mode %04o); chmod 600 it", path, ErrKeyFileMode, perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return peer.Key{}, fmt.Errorf("%s %w (uid %d); chown it to root", path, ErrKeyFileOwner, st.Uid)
	}
	text, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return peer.Key{}, err
	}
	key, err := peer.ParseKey(strings.TrimSpace(string(text)))
	if err != nil {
		return peer.Key{}, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}
