package webhooks

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"postern/queue"
	"postern/queue/reply"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestBodyGolden: the JSON of each kind of event, against
// testdata/<name>.json (go test -update rewrites them; read the diff).
func TestBodyGolden(t *testing.T) {
	at := time.Date(2026, 12, 6, 8, 30, 15, 123456789, time.FixedZone("CET", 3600))
	base := queue.Event{ID: "ev_3q5kcv2bt5xo4kx7awqdb5hbxe", Time: at, QueueID: "0000000000000042",
		MessageID: "<20261206.1@app.example>", Recipient: "bob@example.org", User: "alice",
		Tags: []string{"welcome"}, Metadata: map[string]string{"order": "1234"}}
	for _, tt := range []struct {
		name string
		edit func(*queue.Event)
	}{
		{"accepted", func(e *queue.Event) { e.Type = queue.EventAccepted }},
		{"delivered", func(e *queue.Event) {
			e.Type, e.Attempt, e.RemoteMTA = queue.EventDelivered, 2, "mx.example.org"
			e.Reply = reply.Reply{Code: 250, Enhanced: reply.MustEnhanced("2.0.0"), Text: "Ok: queued as 4Xb"}
		}},
		{"bounced", func(e *queue.Event) {
			e.Type, e.Attempt, e.RemoteMTA = queue.EventBounced, 1, "mx.example.org"
			e.Reply = reply.Reply{Code: 550, Enhanced: reply.MustEnhanced("5.1.1"), Text: "<bob@example.org>: no such user\nsecond line"}
		}},
		{"complained", func(e *queue.Event) { // from a complaint report at listen.mx
			e.Type, e.FeedbackType = queue.EventComplained, "abuse"
		}},
		{"bare", func(e *queue.Event) { // a relay-listener message: no user, tags or metadata
			e.Type, e.User, e.Tags, e.Metadata, e.MessageID = queue.EventAccepted, "", nil, nil, ""
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := base
			tt.edit(&e)
			got, err := Body(&e)
			if err != nil {
				t.Fatal(err)
			}
			var pretty bytes.Buffer
			json.Indent(&pretty, got, "", "  ")
			pretty.WriteByte('\n')
			path := filepath.Join("testdata", tt.name+".json")
			if *update {
				os.WriteFile(path, pretty.Bytes(), 0o644)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Errorf("body of %s:\n%s\nwant (%s):\n%s", tt.name, pretty.Bytes(), path, want)
			}
			again, _ := Body(&e)
			if !bytes.Equal(got, again) {
				t.Error("two bodies of one event differ: retries would not send what was first sent")
			}
		})
	}
}
