package outbound

import (
	"postern/queue"
	"postern/queue/reply"
)

// downgrade is a placeholder.
func (c *client) downgrade(d *queue.Delivery) (queue.Body, *reply.Reply) { return d.Body, nil }
