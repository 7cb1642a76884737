package pickup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"postern/queue"
	"postern/queue/durable"
	"postern/queue/message"
	"postern/relay/status"
	"postern/relay/submit"
)

// Submitter queues one message: *submit.Pipeline. Submit returns only
// once the message is synced in the queue; its error is a *status.Error
// (permanent or temporary) for what it refuses, or the cause of a failure
// (status.From makes that a temporary one).
type Submitter interface {
	Submit(ctx context.Context, env *queue.Envelope, o *submit.Origin, br *bufio.Reader) (id string, size int64, err error)
}

var _ Submitter = (*submit.Pipeline)(nil)

// Listener is the name the queue records as the listener of a picked-up
// message (queue.Envelope.Listener).
const Listener = "maildrop"

// Options configure a Pickup. Dir and Submit are required.
type Options struct {
	// Dir is the maildrop directory (data_dir/maildrop), made ready by
	// Prepare.
	Dir    string
	Submit Submitter
	// Limits are the relay listener's, which drops must pass too.
	Limits Limits
	// Interval is the time between two looks at Dir (default 1s); after a
	// round with a temporary failure the wait doubles, up to a minute, so
	// that a full disk is not retried every second.
	Interval time.Duration
	// Logger gets one line per drop: "picked up", "drop refused", "drop
	// deferred". nil discards them.
	Logger *slog.Logger
	// LookupUser names a user ID for the Received field; nil uses os/user.
	LookupUser func(uid int) string
}

// Pickup takes dropped messages out of the maildrop and queues them.
type Pickup struct {
	opts   Options
	log    *slog.Logger
	stop   chan struct{}
	done   chan struct{}
	cancel context.CancelFunc
	// stuck holds the names the pickup could neither remove after
	// queueing nor move aside: skipped until a restart, so that one file
	// the daemon cannot remove is not queued again every second.
	stuck map[string]bool
}

// maxBackoff caps the wait between rounds after temporary failures.
const maxBackoff = time.Minute

// staleTemp is the age after which a temporary file (a name starting with
// a dot: a sendmail that died before its rename) is moved aside. Writing
// one takes milliseconds: the message is read whole before it starts.
const staleTemp = time.Hour

// New returns a Pickup; Start runs it.
func New(opts Options) *Pickup {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LookupUser == nil {
		opts.LookupUser = func(uid int) string {
			if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
				return u.Username
			}
			return ""
		}
	}
	return &Pickup{opts: opts, log: opts.Logger, stop: make(chan struct{}), done: make(chan struct{}), stuck: map[string]bool{}}
}

// Start looks at the maildrop now, then every Interval, until Stop.
func (p *Pickup) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.run(ctx)
}

func (p *Pickup) run(ctx context.Context) {
	defer close(p.done)
	wait := p.opts.Interval
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		if r := p.Scan(ctx); r.Deferred > 0 {
			wait = min(2*wait, maxBackoff)
		} else {
			wait = p.opts.Interval
		}
		t.Reset(wait)
	}
}

// Stop ends the loop: the drop being queued, if any, is finished unless
// ctx ends first (then its Submit is cancelled, and the drop stays for
// the next start). Stop must be called once; without Start it does
// nothing.
func (p *Pickup) Stop(ctx context.Context) {
	if p.cancel == nil {
		return
	}
	close(p.stop)
	select {
	case <-p.done:
	case <-ctx.Done():
		p.cancel()
		<-p.done
	}
	p.cancel()
}

// Round counts what one look at the maildrop did.
type Round struct {
	PickedUp, Refused, Deferred int
}

// Scan takes every drop in the maildrop once, in the order of their
// names (sendmail's names sort by time), and moves aside temporary files
// left for longer than an hour. It stops early when Stop is called.
func (p *Pickup) Scan(ctx context.Context) Round {
	var r Round
	entries, err := os.ReadDir(p.opts.Dir)
	if err != nil {
		p.log.Error("cannot read the maildrop", slog.String("dir", p.opts.Dir), slog.Any("error", err))
		r.Deferred++
		return r
	}
	for _, e := range entries {
		select {
		case <-p.stop:
			return r
		default:
		}
		name := e.Name()
		if name == BadDir || p.stuck[name] {
			continue
		}
		if strings.HasPrefix(name, ".") {
			p.staleTemp(name, &r)
			continue
		}
		switch p.take(ctx, name) {
		case pickedUp:
			r.PickedUp++
		case refused:
			r.Refused++
		case deferred:
			r.Deferred++
		}
	}
	return r
}

type outcome int

const (
	gone outcome = iota // removed by someone else meanwhile
	pickedUp
	refused
	deferred
)

// take queues the drop called name and removes it, or moves it aside if
// it is not one the pickup may take, or leaves it after a temporary
// failure.
func (p *Pickup) take(ctx context.Context, name string) outcome {
	path := filepath.Join(p.opts.Dir, name)
	f, err := openDrop(path)
	if errors.Is(err, fs.ErrNotExist) {
		return gone
	}
	if err != nil {
		// O_NOFOLLOW fails on a symbolic link; a file its owner made
		// unreadable to the daemon, or a socket, fail too.
		uid, why := -1, fmt.Sprintf("cannot be opened: %v", err)
		if fi, lerr := os.Lstat(path); lerr == nil {
			uid, _ = owner(fi)
			if fi.Mode()&fs.ModeSymlink != 0 {
				target, _ := os.Readlink(path)
				why = "is a symbolic link (to " + target + "): only a file made in the maildrop is taken"
			}
		}
		return p.refuse(name, uid, why, nil)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		p.log.Warn("drop deferred", slog.String("file", path), slog.Any("error", err))
		return deferred
	}
	uid, _ := owner(fi)
	switch {
	case !fi.Mode().IsRegular():
		return p.refuse(name, uid, "is not a regular file (mode "+fi.Mode().String()+")", nil)
	case links(fi) != 1:
		return p.refuse(name, uid, fmt.Sprintf("has %d hard links: only a file made in the maildrop is taken", links(fi)), nil)
	}
	lim := p.opts.Limits
	if lim.MaxMessageBytes > 0 && fi.Size() > MaxEnvelopeLine+1+lim.MaxMessageBytes {
		st := ErrTooLarge.With(fmt.Errorf("the drop has %d bytes", fi.Size()))
		return p.refuse(name, uid, "", st)
	}

	br := bufio.NewReaderSize(f, 64<<10)
	d, err := Parse(br)
	if errors.Is(err, ErrMalformed) {
		return p.refuse(name, uid, err.Error(), nil)
	}
	if err != nil {
		p.log.Warn("drop deferred", slog.String("file", path), slog.Int("uid", uid), slog.Any("error", err))
		return deferred
	}
	if err := lim.Check(d); err != nil {
		return p.refuse(name, uid, "", status.From(err))
	}

	env := &queue.Envelope{From: d.From, Rcpts: d.Rcpts, Listener: Listener, Ret: d.Ret, EnvID: d.EnvID}
	if len(d.Notify) > 0 {
		env.DSN = make([]queue.RcptDSN, len(d.Rcpts))
		for i := range env.DSN {
			env.DSN[i].Notify = d.Notify
		}
	}
	o := &submit.Origin{UID: uid, UserName: p.opts.LookupUser(uid)}
	// The message as the relay listener would take it from a trusted
	// client: any bare CR or LF made CRLF, no line over 2,000 octets, no
	// more than the size limit.
	cr := message.NewCRLFReader(br)
	defer cr.Release()
	in := bufio.NewReaderSize(&guard{r: cr, max: lim.MaxMessageBytes}, 32<<10)
	id, size, err := p.opts.Submit.Submit(ctx, env, o, in)
	if err != nil {
		if st := status.From(err); st.Permanent() {
			return p.refuse(name, uid, "", st)
		}
		p.log.Warn("drop deferred", slog.String("file", path), slog.Int("uid", uid), slog.Any("error", err))
		return deferred
	}

	// The message is synced in the queue: only now may the drop go. A
	// crash before the removal reaches the disk queues it again at the
	// next start: a duplicate, never a loss.
	log := p.log.With(slog.String("id", id), slog.Int("uid", uid), slog.String("user", o.UserName),
		slog.String("from", d.From), slog.Int("rcpts", len(d.Rcpts)), slog.Int64("size", size), slog.String("file", name))
	if err := os.Remove(path); err != nil {
		p.stuck[name] = true
		log.Error("picked up, but the drop cannot be removed: it is skipped until the next start, which will queue it again", slog.Any("error", err))
		return pickedUp
	}
	if err := durable.SyncDir(p.opts.Dir); err != nil {
		log.Warn("picked up, but the maildrop could not be synced: a crash now would queue the drop again", slog.Any("error", err))
	}
	log.Info("picked up")
	return pickedUp
}

// refuse moves the drop called name into bad/ and logs why: a reason in
// words, or the status it was refused with.
func (p *Pickup) refuse(name string, uid int, why string, st *status.Error) outcome {
	attrs := []any{slog.String("file", filepath.Join(p.opts.Dir, name)), slog.Int("uid", uid)}
	if st != nil {
		attrs = append(attrs, slog.Any("reply", st.Reply()))
	} else {
		attrs = append(attrs, slog.String("reason", why))
	}
	to, err := p.moveAside(name)
	if err != nil {
		p.stuck[name] = true
		p.log.Error("drop refused, and it cannot be moved aside: it is skipped until the next start", append(attrs, slog.Any("error", err))...)
		return refused
	}
	p.log.Warn("drop refused", append(attrs, slog.String("moved_to", to))...)
	return refused
}

// moveAside renames name into bad/, under a name no earlier refusal has.
func (p *Pickup) moveAside(name string) (string, error) {
	bad := filepath.Join(p.opts.Dir, BadDir)
	to := filepath.Join(bad, name)
	for i := 1; ; i++ {
		if _, err := os.Lstat(to); errors.Is(err, fs.ErrNotExist) {
			break
		}
		to = filepath.Join(bad, name+"."+strconv.Itoa(i))
	}
	return to, os.Rename(filepath.Join(p.opts.Dir, name), to)
}

// staleTemp moves aside a temporary file older than staleTemp: what a
// sendmail killed between creating and renaming its drop left.
func (p *Pickup) staleTemp(name string, r *Round) {
	fi, err := os.Lstat(filepath.Join(p.opts.Dir, name))
	if err != nil || time.Since(fi.ModTime()) < staleTemp {
		return
	}
	uid, _ := owner(fi)
	p.refuse(name, uid, "temporary file abandoned for more than "+staleTemp.String()+" (its sendmail stopped before finishing it)", nil)
	r.Refused++
}
