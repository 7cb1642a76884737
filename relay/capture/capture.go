// Package capture keeps outgoing mail instead of sending it: the deliverer
// of `delivery.mode: capture`, for development and staging. Messages go
// through the queue, DKIM and every header exactly as in production; only
// the last step differs, and nothing ever reaches the network.
//
// Each Delivery becomes one file in a Maildir (https://cr.yp.to/proto/maildir.html):
// written under tmp/, synced, linked into new/, the directory synced, so a
// crash leaves either no message or a whole one. Mail readers (mutt -f,
// Thunderbird with a Maildir account, Python's mailbox.Maildir) open the
// directory as it is.
//
// The file is the message as it would have been sent (CRLF line ends,
// DKIM-Signature and Received included) with the envelope prepended the way
// a local delivery agent records it: one "Return-Path: <sender>" line
// (RFC 5321 §4.4), then one "Delivered-To: <recipient>" line per recipient
// of the delivery, in RCPT order. Both are outside any DKIM signature, as
// they would be at the final mailbox.
package capture

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"postern/queue"
	"postern/queue/durable"
	"postern/queue/reply"
	"postern/relay/status"
)

// Options configure a Maildir deliverer.
type Options struct {
	// Hostname goes into the file names (the Maildir spec's uniqueness
	// rests on it); default os.Hostname.
	Hostname string
	// Logger gets one line per captured message; nil logs nothing.
	Logger *zap.Logger
}

// Maildir writes every delivery into a Maildir. It implements
// queue.Deliverer; every recipient it writes is Delivered.
type Maildir struct {
	dir  string
	host string
	pid  int
	log  *zap.Logger
	seq  atomic.Uint64
	now  func() time.Time
}

var _ queue.Deliverer = (*Maildir)(nil)

// New creates dir and its tmp, new and cur subdirectories (mode 0700)
// when missing and returns the deliverer.
func New(dir string, opts Options) (*Maildir, error) {
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("capture: %w", err)
		}
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
		if opts.Hostname == "" {
			opts.Hostname = "localhost"
		}
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &Maildir{dir: dir, host: opts.Hostname, pid: os.Getpid(), log: opts.Logger, now: time.Now}, nil
}

// Dir is the Maildir's directory.
func (m *Maildir) Dir() string { return m.dir }

// Deliver writes d as one file into new/. A failure to write (a full
// disk) defers every recipient, as a network failure would.
func (m *Maildir) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	results := make([]queue.Result, len(d.Rcpts))
	if len(d.Rcpts) == 0 {
		return results
	}
	name, err := m.write(ctx, d)
	o, rep := queue.Delivered, reply.Reply{Code: 250, Enhanced: reply.Enhanced{Class: 2}, Text: "captured in " + filepath.Join(m.dir, "new", name)}
	if err != nil {
		o = queue.Temporary
		// RFC 3463 X.3.0 "Other or undefined mail system status".
		rep = status.Wrap(err, 451, 3, 0, "capture failed").Reply()
		m.log.Error("capture failed", zap.String("id", d.ID), zap.Error(err))
	} else {
		m.log.Info("captured", zap.String("id", d.ID), zap.String("from", d.From),
			zap.Strings("rcpts", d.Rcpts), zap.String("file", filepath.Join("new", name)))
	}
	for i := range results {
		results[i] = queue.Result{Outcome: o, Reply: rep}
	}
	return results
}

func (m *Maildir) write(ctx context.Context, d *queue.Delivery) (name string, err error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	body, err := d.Body.Open()
	if err != nil {
		return "", err
	}
	defer body.Close()

	rnd := make([]byte, 8)
	rand.Read(rnd)
	name = uniqueName(m.now(), m.pid, m.seq.Add(1), hex.EncodeToString(rnd), m.host)
	tmp := filepath.Join(m.dir, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := io.WriteString(f, envelopeHeader(d)); err != nil {
		return "", err
	}
	if _, err := io.Copy(f, body); err != nil {
		return "", err
	}
	// The order the Maildir spec asks for: the file is complete on disk
	// before its name appears in new/, and the name is on disk before we
	// say Delivered.
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	// link, not rename: link never replaces an existing file.
	if err := os.Link(tmp, filepath.Join(m.dir, "new", name)); err != nil {
		return "", err
	}
	os.Remove(tmp)
	if err := durable.SyncDir(filepath.Join(m.dir, "new")); err != nil {
		return "", err
	}
	return name, nil
}

// envelopeHeader is what goes before the message: Return-Path and one
// Delivered-To per recipient. Addresses reach the queue parsed and
// cannot hold a line break; any CR or LF is dropped all the same, so that
// no address can add a header.
func envelopeHeader(d *queue.Delivery) string {
	clean := strings.NewReplacer("\r", "", "\n", "")
	var b strings.Builder
	b.WriteString("Return-Path: <" + clean.Replace(d.From) + ">\r\n")
	for _, r := range d.Rcpts {
		b.WriteString("Delivered-To: " + clean.Replace(r) + "\r\n")
	}
	return b.String()
}

// uniqueName builds a file name as the Maildir spec recommends:
// "SECONDS.MusecPpidQdeliveriesRrandom.HOST". The seconds come first so
// that names sort by time; M, P and Q make it unique within this host
// (Q counts deliveries by this process), R adds randomness in case a pid
// is reused within a microsecond. In the host name "/" becomes "\057" and
// ":" becomes "\072", as the spec asks, since "/" cannot be in a file name
// and ":" starts the info part of cur/ names.
func uniqueName(now time.Time, pid int, seq uint64, random, host string) string {
	host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	return fmt.Sprintf("%d.M%06dP%dQ%dR%s.%s", now.Unix(), now.Nanosecond()/1000, pid, seq, random, host)
}
