package relaytest

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
)

// Command is one command a Receiver read, in the order it arrived.
type Command struct {
	// Conn numbers the connection, from 1 in the order they were
	// accepted.
	Conn int
	// Flight numbers what the client sent between two of the server's
	// replies on that connection, from 1: commands with the same Flight
	// arrived before the server had answered any of them (one packet, or
	// one write, from a client that pipelines). Counting the flights of
	// a transaction counts its round trips.
	Flight int
	// Line is the command as sent, without its line end ("MAIL
	// FROM:<a@b> BODY=8BITMIME", "BDAT 120 LAST"); "." stands for the end
	// of DATA content (the content itself is in Messages).
	Line string
}

// Commands returns the commands read so far on connections without
// implicit TLS; on a connection that started TLS, those up to STARTTLS.
func (r *Receiver) Commands() []Command {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Command(nil), r.cmds...)
}

// cmdLog follows one connection's dialogue from both sides, as the bytes
// pass, to log its commands: it must know where DATA content (after a
// 354) and BDAT chunks (by their size) begin and end, so as not to take
// lines of a message for commands. It also hides the EHLO keywords the
// Receiver does not offer. Both sides are called from the connection's
// goroutine, one at a time.
type cmdLog struct {
	r    *Receiver
	conn int
	on   bool // off once TLS starts, or with implicit TLS

	flight int
	wrote  bool   // the server wrote since the client's last read
	line   []byte // a partial line
	data   bool   // in DATA content
	chunk  int    // bytes of a BDAT chunk still to come
	last   string // the last command's verb, upper case
	ehlo   [][]byte
}

func (l *cmdLog) read(p []byte) {
	if !l.on || len(p) == 0 {
		return
	}
	if l.wrote || l.flight == 0 {
		l.flight++
		l.wrote = false
	}
	for len(p) > 0 {
		if l.chunk > 0 {
			n := min(l.chunk, len(p))
			l.chunk -= n
			p = p[n:]
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.line = append(l.line, p...)
			return
		}
		l.line = append(l.line, p[:i+1]...)
		p = p[i+1:]
		line := strings.TrimRight(string(l.line), "\r\n")
		l.line = l.line[:0]
		if l.data {
			if line == "." {
				l.data = false
				l.add(".")
			}
			continue
		}
		l.add(line)
		verb, rest, _ := strings.Cut(line, " ")
		l.last = strings.ToUpper(verb)
		if l.last == "BDAT" {
			size, _, _ := strings.Cut(rest, " ")
			if n, err := strconv.Atoi(size); err == nil && n > 0 {
				l.chunk = n
			}
		}
	}
}

func (l *cmdLog) add(line string) {
	l.r.mu.Lock()
	l.r.cmds = append(l.r.cmds, Command{Conn: l.conn, Flight: l.flight, Line: line})
	l.r.notifyLocked()
	l.r.mu.Unlock()
}

// write sees one reply line of the server (go-smtp writes each line on its
// own) and returns what to send in its place: the EHLO reply is held until
// its last line, then sent without the hidden keywords.
func (l *cmdLog) write(p []byte) (out []byte, n int) {
	if !l.on {
		return p, len(p)
	}
	l.wrote = true
	switch {
	case bytes.HasPrefix(p, []byte("354")) && l.last == "DATA":
		l.data = true
	case bytes.HasPrefix(p, []byte("220")) && l.last == "STARTTLS":
		l.on = false
	case (l.last == "EHLO" || l.last == "HELO") && len(l.r.hide) > 0 && bytes.HasPrefix(p, []byte("250")):
		l.ehlo = append(l.ehlo, append([]byte(nil), p...))
		if len(p) > 3 && p[3] == '-' {
			return nil, len(p) // more lines to come
		}
		out = l.filterEHLO()
		return out, len(p)
	}
	return p, len(p)
}

// filterEHLO drops the hidden keywords from the held EHLO reply and puts
// its separators right again.
func (l *cmdLog) filterEHLO() []byte {
	var keep []string
	for i, raw := range l.ehlo {
		text := strings.TrimRight(string(raw[4:]), "\r\n")
		kw, _, _ := strings.Cut(text, " ")
		if i > 0 && slices.Contains(l.r.hide, strings.ToUpper(kw)) {
			continue
		}
		keep = append(keep, text)
	}
	l.ehlo = nil
	var b bytes.Buffer
	for i, text := range keep {
		sep := "-"
		if i == len(keep)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + text + "\r\n")
	}
	return b.Bytes()
}
