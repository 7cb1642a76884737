package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"postern/queue/durable"
)

// spoolFile is the part of *os.File that writeSpool uses; an interface only
// so tests can inject disk errors such as ENOSPC.
type spoolFile interface {
	io.Writer
	Sync() error
	Close() error
}

func createSpoolFile(path string) (spoolFile, error) {
	// O_EXCL: a name collision must fail, never overwrite a queued body.
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

// writeSpool writes head and then the rest of the body to a new file in the
// spool directory and makes it durable: the file is fsynced, then the
// directory, because a new directory entry is only durable once its
// directory is synced (fsync(2): "Calling fsync() does not necessarily
// ensure that the entry in the directory containing the file has also
// reached disk"). The file gets its final name at once, so there is no
// rename; the record that points to it is committed only after this
// returns. The body is streamed: at most one copy buffer of it is in memory.
func (q *Queue) writeSpool(head []byte, rest io.Reader) (name string, size int64, err error) {
	var rnd [8]byte
	rand.Read(rnd[:]) // never fails (crypto/rand docs, Go 1.24+)
	name = "m" + hex.EncodeToString(rnd[:])
	path := filepath.Join(q.spoolDir, name)
	f, err := q.createSpool(path)
	if err != nil {
		return "", 0, fmt.Errorf("queue: create spool file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	n, err := f.Write(head)
	if err != nil {
		return "", 0, fmt.Errorf("queue: write spool file: %w", err)
	}
	m, err := io.Copy(f, rest)
	if err != nil {
		// Either reading the body or writing the file failed; %w keeps
		// whichever cause it was.
		return "", 0, fmt.Errorf("queue: spool message: %w", err)
	}
	if err = f.Sync(); err != nil {
		return "", 0, fmt.Errorf("queue: sync spool file: %w", err)
	}
	if err = f.Close(); err != nil {
		return "", 0, fmt.Errorf("queue: close spool file: %w", err)
	}
	if err = durable.SyncDir(q.spoolDir); err != nil {
		return "", 0, fmt.Errorf("queue: sync spool directory: %w", err)
	}
	return name, int64(n) + m, nil
}

// cleanSpool removes spool files that no message refers to: files written
// by an Enqueue that crashed before its commit, or left by a crash between
// a message's removal and its file's. It runs in Open, after the file lock
// is held and before any Enqueue, so no file can be half-way to being
// referenced.
func (q *Queue) cleanSpool() error {
	entries, err := os.ReadDir(q.spoolDir)
	if err != nil {
		return fmt.Errorf("queue: read spool directory: %w", err)
	}
	var orphans []string
	err = q.db.View(func(tx *bolt.Tx) error {
		idx := tx.Bucket(bSpool)
		for _, e := range entries {
			if e.Type().IsRegular() && idx.Get([]byte(e.Name())) == nil {
				orphans = append(orphans, e.Name())
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue: %s: %w", q.path, err)
	}
	for _, name := range orphans {
		if err := os.Remove(filepath.Join(q.spoolDir, name)); err != nil {
			return fmt.Errorf("queue: remove orphan spool file: %w", err)
		}
		q.log.Info("removed orphan spool file", slog.String("file", name))
	}
	return nil
}

// inlineBody is a body kept in bbolt, copied out of its transaction once
// per lease and shared by that lease's deliveries.
type inlineBody []byte

func (b inlineBody) Size() int64 { return int64(len(b)) }
func (b inlineBody) Open() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b)), nil
}

// spoolBody is a body in a spool file, opened anew for each reader and
// never read whole into memory.
// body is the message of rec as a Body: inline (bytes of the bodies
// bucket, copied out of their transaction, or the enqueue's own buffer) or
// its spool file with rec's prefix.
func (q *Queue) body(rec *record, inline []byte) Body {
	if rec.Spool != "" {
		return spoolBody{path: filepath.Join(q.spoolDir, rec.Spool), size: rec.Size, prefix: rec.Prefix}
	}
	return inlineBody(inline)
}

type spoolBody struct {
	path   string
	size   int64  // of the whole message, prefix included
	prefix []byte // record.Prefix
}

func (b spoolBody) Size() int64 { return b.size }
func (b spoolBody) Open() (io.ReadCloser, error) {
	f, err := os.Open(b.path)
	if err != nil || len(b.prefix) == 0 {
		return f, err
	}
	return prefixed{io.MultiReader(bytes.NewReader(b.prefix), f), f}, nil
}

type prefixed struct {
	io.Reader
	io.Closer
}

// removeSpool removes the spool file of a message whose record no longer
// points to it (the commit saying so is on disk), if it had one. A failure
// leaves an orphan for Open to remove: it is logged, not returned.
func (q *Queue) removeSpool(name, id string) {
	if name == "" {
		return
	}
	if err := os.Remove(filepath.Join(q.spoolDir, name)); err != nil {
		q.log.Warn("remove spool file", slog.String("id", id), slog.Any("error", err))
	}
}
