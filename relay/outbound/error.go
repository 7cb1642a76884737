package outbound

import "postern/relay/smtpclient"

// The commands an Error can answer (see relay/smtpclient).
const (
	CmdConnect  = smtpclient.CmdConnect // the greeting after the TCP connection opens
	CmdEHLO     = smtpclient.CmdEHLO    // EHLO, or HELO when the server knows no EHLO
	CmdSTARTTLS = smtpclient.CmdSTARTTLS
	CmdAUTH     = smtpclient.CmdAUTH // AUTH and its SASL exchange (RFC 4954)
	CmdMAIL     = smtpclient.CmdMAIL
	CmdRCPT     = smtpclient.CmdRCPT
	CmdDATA     = smtpclient.CmdDATA // the 354 go-ahead
	CmdBDAT     = smtpclient.CmdBDAT // a BDAT chunk before the last
	CmdEOD      = smtpclient.CmdEOD  // the reply after the message content
)

// Error is a reply from a remote SMTP server, kept in the remote's words
// because logs and bounces must quote them: the command it answered and
// the typed reply (reply.Reply), which delivery results carry as it is
// into the queue. It is read once, where it arrives, by relay/smtpclient.
type Error = smtpclient.Error

// ParseReply parses a reply as received into an Error answering command;
// see smtpclient.ParseReply.
func ParseReply(command, wire string) (*Error, error) { return smtpclient.ParseReply(command, wire) }
