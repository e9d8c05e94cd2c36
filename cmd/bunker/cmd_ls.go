package main

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"bunker/internal/snapshot"
)

type nodeJSON struct {
	Path       string    `json:"path"`
	Name       string    `json:"name"`
	Type       string    `json:"type"`
	Mode       string    `json:"mode"`
	Size       uint64    `json:"size,omitempty"`
	UID        uint32    `json:"uid"`
	GID        uint32    `json:"gid"`
	User       string    `json:"user,omitempty"`
	Group      string    `json:"group,omitempty"`
	ModTime    time.Time `json:"mtime"`
	LinkTarget string    `json:"link_target,omitempty"`
}

func toJSON(p string, n *snapshot.Node) nodeJSON {
	return nodeJSON{Path: p, Name: n.Name, Type: n.Type.String(), Mode: modeString(n), Size: n.Size, UID: n.UID, GID: n.GID,
		User: n.User, Group: n.Group, ModTime: n.ModTime, LinkTarget: n.LinkTarget}
}

func modeString(n *snapshot.Node) string {
	m := fs.FileMode(n.Mode & 0o777)
	if n.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if n.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if n.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch n.Type {
	case snapshot.TypeDir:
		m |= fs.ModeDir
	case snapshot.TypeSymlink:
		m |= fs.ModeSymlink
	case snapshot.TypeDev:
		m |= fs.ModeDevice
	case snapshot.TypeCharDev:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case snapshot.TypeFifo:
		m |= fs.ModeNamedPipe
	case snapshot.TypeSocket:
		m |= fs.ModeSocket
	}
	return m.String()
}

func newLsCmd(g *globalOptions) *cobra.Command {
	var long bool
	var f snapshotFilter
	c := &cobra.Command{
		Use:   "ls SNAPSHOT|latest [PATH]",
		Short: "List the files of a snapshot",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			r, sn, release, err := g.openSnapshot(ctx, args[0], f, c.ErrOrStderr())
			if err != nil {
				return err
			}
			defer release()
			start := "/"
			if len(args) == 2 {
				start = path.Clean("/" + args[1])
			}
			node, err := findNode(ctx, r, sn.Tree, start)
			if err != nil {
				return err
			}
			// One write per line cost ls a third of its time on a large tree.
			bw := bufio.NewWriterSize(c.OutOrStdout(), 64<<10)
			w := io.Writer(bw)
			print := func(p string, n *snapshot.Node) error {
				switch {
				case g.json:
					return printJSON(w, toJSON(p, n))
				case long:
					target := ""
					if n.Type == snapshot.TypeSymlink {
						target = " -> " + n.LinkTarget
					}
					_, err := fmt.Fprintf(w, "%s %5d %5d %12d %s %s%s\n", modeString(n), n.UID, n.GID, n.Size,
						n.ModTime.Local().Format("2006-01-02 15:04:05"), quote(p), quote(target))
					return err
				}
				_, err := fmt.Fprintln(w, quote(p))
				return err
			}
			if node.Type != snapshot.TypeDir {
				err = print(start, node)
			} else {
				err = walk(ctx, r, node.Subtree, start, print)
			}
			if ferr := bw.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	c.Flags().BoolVarP(&long, "long", "l", false, "show mode, owner, size and time")
	addFilterFlags(c, &f)
	return c
}

// quote escapes what is not printable (C0 and C1 controls, bidirectional
// and other format characters, invalid UTF-8) so a hostile name cannot
// rewrite the terminal or disguise itself; a name with a backslash is
// escaped too, so that it cannot pass for another name's escaped form.
func quote(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return !strconv.IsPrint(r) || r == utf8.RuneError || r == '\\' }) {
		return s
	}
	q := fmt.Sprintf("%q", s)
	return q[1 : len(q)-1]
}
