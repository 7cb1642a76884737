package status_test

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"

	"postern/relay/status"
)

// Session methods return errors of any kind and pass them through ToSMTP
// once, on the way out to go-smtp. A status error keeps its reply; anything
// else becomes a temporary failure that tells the client nothing about the
// cause, which goes to the log instead.
func Example() {
	errQuota := status.New(452, 3, 1, "Insufficient system storage, try again later")
	diskErr := errors.New("write /var/spool/postern/1: no space left on device")

	for _, err := range []error{
		status.Wrap(diskErr, errQuota.Code, errQuota.Subject, errQuota.Detail, errQuota.Message),
		fmt.Errorf("enqueue: %w", status.New(550, 1, 1, "No such user")),
		diskErr,
	} {
		// What go-smtp writes to the client:
		reply := status.ToSMTP(err).(*smtp.SMTPError)
		c := reply.EnhancedCode
		fmt.Printf("%d %d.%d.%d %s\n", reply.Code, c[0], c[1], c[2], reply.Message)
		// What the log gets:
		fmt.Println("  log:", err)
	}
	// Output:
	// 452 4.3.1 Insufficient system storage, try again later
	//   log: 452 4.3.1 Insufficient system storage, try again later: write /var/spool/postern/1: no space left on device
	// 550 5.1.1 No such user
	//   log: enqueue: 550 5.1.1 No such user
	// 451 4.3.0 Local error in processing, try again later
	//   log: write /var/spool/postern/1: no space left on device
}
