// Command lcast gives this host a network interface, lc0, on which IPv6
// multicast works across the Internet. See lcast(8) and the README.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/librecast/lcast/bridge"
	"github.com/librecast/lcast/internal/config"
	"github.com/librecast/lcast/internal/control"
	"github.com/librecast/lcast/internal/daemon"
	"github.com/librecast/lcast/peer"
	"github.com/urfave/cli/v2"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "lcast: %v\n", err)
		os.Exit(1)
	}
}

var configFlag = &cli.StringFlag{
	Name:     "config",
	Aliases:  []string{"c"},
	Usage:    "read the configuration from `FILE` (TOML, see lcast.toml(5))",
	Required: true,
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "lcast",
		Usage: "IPv6 multicast across the Internet through the lc0 interface",
		Description: "lcast creates lc0, a network interface on which programs join and send to IPv6\n" +
			"multicast groups with ordinary sockets. It learns their joins from MLD and carries\n" +
			"the matching packets to and from its peers over authenticated, encrypted UDP.",
		HideHelpCommand: true,
		// deploy/completions call lcast --generate-bash-completion.
		EnableBashCompletion: true,
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(os.Stderr, "lcast: unknown command %q; see lcast --help\n", name)
			os.Exit(2)
		},
		Commands: []*cli.Command{
			{
				Name:  "genkey",
				Usage: "print a new private key (base64, WireGuard's format)",
				Description: "Prints a new Curve25519 private key. Keep it secret: put it in the\n" +
					"configuration's private_key or in the file named by private_key_file.\n" +
					"With --file, writes the key to FILE instead (mode 0600, never replacing a\n" +
					"file already there) and prints its public key; a FILE that already holds a\n" +
					"key is kept, and its public key printed. Containers without a shell make\n" +
					"their node's key this way.",
				Flags: []cli.Flag{&cli.StringFlag{Name: "file",
					Usage: "write the key to `FILE` unless it already holds one; print the public key"}},
				Action: genkey,
			},
			{
				Name:        "pubkey",
				Usage:       "read a private key on standard input and print its public key",
				Description: "Example: lcast genkey | tee node.key | lcast pubkey",
				Action:      pubkey,
			},
			{
				Name:  "up",
				Usage: "run the daemon in the foreground until SIGINT or SIGTERM",
				Description: "Creates the interface (or adopts the one an earlier lcast left after a crash),\n" +
					"configures its address and multicast routes, and serves until SIGINT or SIGTERM,\n" +
					"then removes the interface and every route it added. SIGHUP reads the configuration\n" +
					"again and applies its [[peer]] tables without disturbing the other peers' traffic.",
				Flags: []cli.Flag{configFlag,
					&cli.BoolFlag{Name: "debug", Usage: "log debug messages"}},
				Action: up,
			},
			{
				Name:  "reload",
				Usage: "make the running daemon read its configuration again, as SIGHUP does",
				Description: "Asks the daemon through the configuration's control_socket (root only) to read\n" +
					"its configuration again and apply its [[peer]] tables; prints what changed, or\n" +
					"fails with the reason the daemon refused it (an invalid file changes nothing).",
				Flags:  []cli.Flag{configFlag},
				Action: reload,
			},
			{
				Name:        "status",
				Usage:       "show the running daemon's interface, peers and groups",
				Description: "Asks the daemon through the configuration's control_socket (root only).",
				Flags: []cli.Flag{configFlag,
					&cli.BoolFlag{Name: "json", Usage: "print JSON for machines"}},
				Action: status,
			},
		},
	}
}

func genkey(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("genkey takes no arguments")
	}
	if path := c.String("file"); path != "" {
		k, err := keyFile(path)
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, k.PublicKey())
		return nil
	}
	k, err := peer.GenerateKey()
	if err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, k)
	return nil
}

// keyFile returns the private key in the file at path, first writing a new
// one there if no file is. The new key is written to a temporary file in
// the same directory and linked into place, so path is never replaced,
// never half written, and two racing callers end with the same key.
func keyFile(path string) (peer.Key, error) {
	if _, err := os.Lstat(path); err == nil {
		return config.ReadKeyFile(path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return peer.Key{}, err
	}
	k, err := peer.GenerateKey()
	if err != nil {
		return peer.Key{}, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".lcast-key-*")
	if err != nil {
		return peer.Key{}, fmt.Errorf("write private key: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600, whatever the umask.
	_, err = fmt.Fprintln(tmp, k)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return peer.Key{}, fmt.Errorf("write private key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, os.ErrExist) {
		return config.ReadKeyFile(path)
	} else if err != nil {
		return peer.Key{}, fmt.Errorf("write private key: %w", err)
	}
	return k, nil
}

func pubkey(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("pubkey takes no arguments; it reads the private key on standard input")
	}
	line, err := bufio.NewReader(io.LimitReader(os.Stdin, 1024)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read private key: %w", err)
	}
	k, err := peer.ParseKey(strings.TrimSpace(line))
	if err != nil {
		return fmt.Errorf("read private key from standard input: %w", err)
	}
	fmt.Fprintln(c.App.Writer, k.PublicKey())
	return nil
}

// noArgs refuses arguments to a command that takes none.
func noArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("%s takes no arguments, got %q", c.Command.Name, c.Args().Slice())
	}
	return nil
}

func up(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	cfg, err := config.Load(c.String("config"))
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if c.Bool("debug") {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// The packets in flight take at most bridge.MemoryBound; a soft limit
	// a little above it makes the collector run before the heap doubles
	// what a burst left, rather than after. GOMEMLIMIT overrides it.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(bridge.MemoryBound + memoryHeadroom)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	path := c.String("config")
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return daemon.Run(ctx, cfg, log, hup, func() (*config.Config, error) { return config.Load(path) })
}

// memoryHeadroom is what lcast's soft memory limit allows beyond the
// packets in flight: tables, subscriptions, sessions, the runtime's own.
const memoryHeadroom = 16 << 20

// controlSocket checks that a client command got no arguments and returns
// the daemon's control socket, found in the configuration without reading
// the private key.
func controlSocket(c *cli.Context) (string, error) {
	if err := noArgs(c); err != nil {
		return "", err
	}
	return config.ControlSocket(c.String("config"))
}

// reload asks the daemon to apply its configuration again.
func reload(c *cli.Context) error {
	sock, err := controlSocket(c)
	if err != nil {
		return err
	}
	msg, err := control.Reload(c.Context, sock)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	fmt.Fprintln(c.App.Writer, msg)
	return nil
}

// status asks the daemon; it finds the control socket in the
// configuration without reading the private key.
func status(c *cli.Context) error {
	sock, err := controlSocket(c)
	if err != nil {
		return err
	}
	st, err := control.GetStatus(context.Background(), sock)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(c.App.Writer, st, time.Now())
	return nil
}
