package webhooks

import (
	"bytes"
	"encoding/json"

	"postern/queue"
	"postern/queue/reply"
)

// payload is the JSON body of a webhook request, as issue 15 gives it:
// the Standard Webhooks shape (type, timestamp, data) with the event id
// beside them. Every data key is always present (empty when it does not
// apply), so that receivers never guess whether a key was dropped.
type payload struct {
	Type      queue.EventType `json:"type"`
	ID        string          `json:"id"`
	Timestamp string          `json:"timestamp"`
	Data      data            `json:"data"`
}

type data struct {
	QueueID   string            `json:"queue_id"`
	MessageID string            `json:"message_id"`
	Recipient string            `json:"recipient"`
	User      string            `json:"user"`
	Tags      []string          `json:"tags"`
	Metadata  map[string]string `json:"metadata"`
	Attempt   int               `json:"attempt"`
	RemoteMTA string            `json:"remote_mta"`
	Reply     *replyJSON        `json:"reply"` // null when there was no reply (accepted)
	// FeedbackType is a complaint's kind (RFC 5965 §3.5: abuse, fraud,
	// virus, other, ...); "" for other events.
	FeedbackType string `json:"feedback_type"`
}

type replyJSON struct {
	Code         int    `json:"code"`
	EnhancedCode string `json:"enhanced_code"`
	Text         string `json:"text"`
}

// Body is the request body for ev. It depends on ev alone, so every
// attempt sends the same bytes: only webhook-timestamp and the signature
// change.
func Body(ev *queue.Event) ([]byte, error) {
	p := payload{
		Type: ev.Type, ID: ev.ID,
		// The time of the event, not of the attempt (that is
		// webhook-timestamp); RFC 3339 in UTC, to the millisecond.
		Timestamp: ev.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		Data: data{
			QueueID: ev.QueueID, MessageID: ev.MessageID, Recipient: ev.Recipient, User: ev.User,
			Tags: ev.Tags, Metadata: ev.Metadata, Attempt: ev.Attempt, RemoteMTA: ev.RemoteMTA,
			FeedbackType: ev.FeedbackType,
		},
	}
	if p.Data.Tags == nil {
		p.Data.Tags = []string{}
	}
	if p.Data.Metadata == nil {
		p.Data.Metadata = map[string]string{}
	}
	if !ev.Reply.IsZero() {
		p.Data.Reply = replyOf(ev.Reply)
	}
	// Not HTML-escaped: a Message-ID's <> stay as they are, so that
	// the body reads as the event does.
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func replyOf(r reply.Reply) *replyJSON {
	return &replyJSON{Code: r.Code, EnhancedCode: r.Enhanced.String(), Text: r.Text}
}
