package postgres

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"postern/queue"
	"postern/queue/postgres/pgtest"
)

// A migration cut off after the insert and before the delete from the
// old queue is run again: the second Import of an origin inserts
// nothing, and the old queue's instance name stays the same.
func TestImportTwiceInsertsOnce(t *testing.T) {
	dir := t.TempDir()
	src, err := queue.Open(queue.Options{Path: filepath.Join(dir, "queue.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	id, err := src.Enqueue(context.Background(), &queue.Envelope{From: "s@x.test", Rcpts: []string{"a@y.test", "b@y.test"},
		DSN: []queue.RcptDSN{{Notify: []string{"NEVER"}}, {}}}, strings.NewReader("Subject: s\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	src.Hold(id)
	inst, _ := src.Instance()
	if again, _ := src.Instance(); again != inst || len(inst) != 24 {
		t.Fatalf("Instance %q then %q", inst, again)
	}
	dst := open(t, pgtest.DB(t), Options{})
	for run, want := range []bool{true, false} {
		var got []bool
		err := src.Export(func(e *queue.Exported) error {
			ins, err := dst.Import(context.Background(), "bbolt:"+inst+":"+e.Message.ID, e)
			got = append(got, ins)
			return err
		})
		if err != nil || len(got) != 1 || got[0] != want {
			t.Fatalf("run %d: inserted %v, %v", run, got, err)
		}
	}
	all, _ := dst.List(queue.Filter{})
	if len(all) != 1 || !all[0].Held || all[0].State != queue.StateHeld || len(all[0].Rcpts) != 2 ||
		all[0].Envelope.DSN[0].Notify[0] != "NEVER" || all[0].Size != int64(len("Subject: s\r\n\r\nbody\r\n")) {
		t.Fatalf("imported %+v", all)
	}
	b := &body{q: dst, id: mustID(t, all[0].ID), size: all[0].Size}
	if f, err := b.Open(); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
}

func mustID(t *testing.T, s string) int64 {
	n, err := parseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
