package outbound

// Waiting is the number of deliveries of m waiting for a connection slot.
func Waiting(m *MX) int { return m.pool.waiting() }
