package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"postern/auth"
	"postern/queue"
	"postern/queue/message"
	"postern/relay/submit"
)

// SendQueue is what the send API needs of the queue. *queue.Queue
// implements it.
type SendQueue interface {
	Get(id string) (*queue.Message, error)
	Idempotent(user, key string) (*queue.Accepted, error)
	Suppressed(user, addr string) (*queue.Suppression, error)
	Suppressions(user string, all bool) ([]queue.Suppression, error)
	Unsuppress(user, addr string) error
	RecordEvents(evs ...queue.Event) error
}

var _ SendQueue = (*queue.Queue)(nil)

// Submitter queues a message as the SMTP listeners do (relay/submit's
// Pipeline): header rules, Received field, DKIM signature, durable before
// it returns.
type Submitter interface {
	Submit(ctx context.Context, env *queue.Envelope, o *submit.Origin, br *bufio.Reader) (id string, size int64, err error)
}

// KeyAuthenticator checks a bearer key: an application password of
// `postern user key add` (auth.Store).
type KeyAuthenticator interface {
	AuthenticateKey(ctx context.Context, secret string) (*auth.User, string, error)
}

// Limiter spends a user's message and recipient allowance, shared with
// SMTP (smtpd.Policy): 0, or how long until it is available (-1: never)
// and which limit said so.
type Limiter interface {
	TakeMessage(user string, rcpts int, now time.Time) (wait time.Duration, what, limit string)
}

// SendOptions configure NewSendHandler. Queue, Submitter and Keys are
// required.
type SendOptions struct {
	Queue     SendQueue
	Submitter Submitter
	Keys      KeyAuthenticator
	Limiter   Limiter // nil: no limits
	// IgnoreSuppressions sends to suppressed addresses too (the
	// configuration's suppression.enabled: false), as SMTP then does.
	IgnoreSuppressions bool
	// MaxMessageSize bounds the message as built (and a raw one as
	// sent); MaxRecipients the envelope.
	MaxMessageSize int64
	MaxRecipients  int
	// Accepted, when set, counts each message queued (relay/metrics).
	Accepted func(listener string, size int64)
	Logger   *zap.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time

	// As Options: the Host names the listener answers.
	Listen       string
	AllowedHosts []string
	Hostname     string
}

type sendHandler struct {
	o   SendOptions
	log *zap.Logger
	// keys serialises requests with the same idempotency key: the key is
	// recorded with the message, so two at once could both queue one.
	keys keyLocks
}

// NewSendHandler returns the handler of listen.api: the HTTP send API for
// applications (POST /v1/messages and the rest, below). Every request
// needs a bearer key, and acts as the key's user: the same senders, the
// same rate limits and the same header rules as SMTP submission.
func NewSendHandler(o SendOptions) http.Handler {
	if o.Queue == nil || o.Submitter == nil || o.Keys == nil {
		panic("httpapi: NewSendHandler without Queue, Submitter or Keys")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	h := &sendHandler{o: o, log: o.Logger}
	mux := http.NewServeMux()
	mux.Handle("/v1/messages", h.authenticated(sendMethods(h.send, http.MethodPost)))
	mux.Handle("/v1/messages/{id}", h.authenticated(sendMethods(h.status, http.MethodGet)))
	mux.Handle("/v1/suppressions", h.authenticated(sendMethods(h.suppressions, http.MethodGet)))
	mux.Handle("/v1/suppressions/{address}", h.authenticated(sendMethods(h.unsuppress, http.MethodDelete)))
	mux.Handle("/healthz", methods(healthz, http.MethodGet, http.MethodHead))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.URL.Path)
	})
	return guard(mux, newHostPolicy(o.Listen, o.Hostname, o.AllowedHosts), o.Logger, "api",
		func(w http.ResponseWriter, code int, msg string) {
			apiError(w, code, map[int]string{http.StatusForbidden: "cross_origin", http.StatusMisdirectedRequest: "misdirected"}[code], msg)
		})
}

// apiErrorBody is every error of the send API: a code a program can switch
// on, a message a person can read, and for 400 what is wrong by field.
type apiErrorBody struct {
	Error struct {
		Code       string       `json:"code"`
		Message    string       `json:"message"`
		Fields     []FieldError `json:"fields,omitempty"`
		Suppressed []string     `json:"suppressed,omitempty"`
	} `json:"error"`
}

func apiError(w http.ResponseWriter, status int, code, msg string) {
	var b apiErrorBody
	b.Error.Code, b.Error.Message = code, msg
	writeJSON(w, status, b)
}

func sendMethods(f http.HandlerFunc, allowed ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if methodAllowed(w, r, allowed) {
			f(w, r)
			return
		}
		apiError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use "+strings.Join(allowed, " or "))
	})
}

type userKey struct{}

// authenticated requires a valid bearer key and puts its user in the
// request's context. A failure costs the same padding as a wrong SMTP
// password (auth.Store), which makes guessing keys slow.
func (h *sendHandler) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secret, ok := bearer(r)
		if !ok || secret == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="postern"`)
			apiError(w, http.StatusUnauthorized, "unauthorized", "an application key is required: Authorization: Bearer KEY")
			return
		}
		u, keyID, err := h.o.Keys.AuthenticateKey(r.Context(), secret)
		if err != nil {
			h.log.Warn("api: key refused", zap.String("remote", r.RemoteAddr), zap.String("path", r.URL.Path))
			w.Header().Set("WWW-Authenticate", `Bearer realm="postern", error="invalid_token"`)
			apiError(w, http.StatusUnauthorized, "unauthorized", "the key is not valid")
			return
		}
		ctx := context.WithValue(r.Context(), userKey{}, u)
		h.log.Debug("api: request", zap.String("user", u.Name), zap.String("key_id", keyID),
			zap.String("method", r.Method), zap.String("path", r.URL.Path))
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func userOf(r *http.Request) *auth.User { return r.Context().Value(userKey{}).(*auth.User) }

// sendAnswer is the 202 of POST /v1/messages.
type sendAnswer struct {
	ID         string   `json:"id"`
	MessageID  string   `json:"message_id"`
	Suppressed []string `json:"suppressed,omitempty"`
}

// maxIdempotencyKey bounds the Idempotency-Key header.
const maxIdempotencyKey = 255

func (h *sendHandler) send(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	key := r.Header.Get("Idempotency-Key")
	if len(key) > maxIdempotencyKey || !validText(key) || strings.ContainsAny(key, "\t") {
		apiError(w, http.StatusBadRequest, "invalid_idempotency_key", fmt.Sprintf("Idempotency-Key must be at most %d printable characters", maxIdempotencyKey))
		return
	}
	if key != "" {
		unlock := h.keys.lock(u.Name + "\x00" + key)
		defer unlock()
		prev, err := h.o.Queue.Idempotent(u.Name, key)
		if err != nil {
			h.internal(w, r, "idempotency lookup", err)
			return
		}
		if prev != nil {
			// The first answer again, and nothing queued (the body is
			// not even read).
			w.Header().Set("Idempotent-Replayed", "true")
			writeJSON(w, http.StatusAccepted, sendAnswer{ID: prev.ID, MessageID: prev.MessageID})
			return
		}
	}

	env, msg, status := h.readRequest(w, r, u)
	if status {
		return
	}
	env.IdempotencyKey = key
	h.submit(w, r, u, env, msg)
}

// readRequest reads the body, JSON or message/rfc822, into an envelope and
// a message; done is true once an error has been written.
func (h *sendHandler) readRequest(w http.ResponseWriter, r *http.Request, u *auth.User) (env *queue.Envelope, msg []byte, done bool) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		mt = ""
	}
	limit := h.o.MaxMessageSize
	if mt == "application/json" {
		// base64 attachments grow by a third, and the JSON around
		// them is small.
		limit = limit/3*4 + 64<<10
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig {
		apiError(w, http.StatusRequestEntityTooLarge, "message_too_large", fmt.Sprintf("the message exceeds the size limit of %d bytes", h.o.MaxMessageSize))
		return nil, nil, true
	}
	if err != nil {
		apiError(w, http.StatusBadRequest, "bad_request", "reading the request: "+err.Error())
		return nil, nil, true
	}
	env = &queue.Envelope{User: u.Name, Listener: "api", ClientIP: clientIP(r).String()}
	switch mt {
	case "application/json":
		var req SendRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			apiError(w, http.StatusBadRequest, "invalid_json", "the body is not a message request: "+err.Error())
			return nil, nil, true
		}
		if dec.More() {
			apiError(w, http.StatusBadRequest, "invalid_json", "one JSON object per request")
			return nil, nil, true
		}
		c, errs := compose(&req, h.o.Now())
		if errs != nil {
			var b apiErrorBody
			b.Error.Code, b.Error.Message, b.Error.Fields = "invalid_request", describe(errs), errs
			writeJSON(w, http.StatusBadRequest, b)
			return nil, nil, true
		}
		env.From, env.Rcpts, env.Tags, env.Metadata = c.from, c.rcpts, req.Tags, req.Metadata
		msg = c.msg
	case "message/rfc822":
		from, rcpts, errs := rawEnvelope(r, body)
		if errs != nil {
			var b apiErrorBody
			b.Error.Code, b.Error.Message, b.Error.Fields = "invalid_request", describe(errs), errs
			writeJSON(w, http.StatusBadRequest, b)
			return nil, nil, true
		}
		env.From, env.Rcpts = from, rcpts
		msg = body
	default:
		apiError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type must be application/json or message/rfc822")
		return nil, nil, true
	}
	if int64(len(msg)) > h.o.MaxMessageSize {
		apiError(w, http.StatusRequestEntityTooLarge, "message_too_large", fmt.Sprintf("the message as built is %d bytes, over the limit of %d", len(msg), h.o.MaxMessageSize))
		return nil, nil, true
	}
	if h.o.MaxRecipients > 0 && len(env.Rcpts) > h.o.MaxRecipients {
		apiError(w, http.StatusBadRequest, "too_many_recipients", fmt.Sprintf("%d recipients; at most %d per message", len(env.Rcpts), h.o.MaxRecipients))
		return nil, nil, true
	}
	return env, msg, false
}

// submit checks the user's rights, limits and suppressions, then queues.
func (h *sendHandler) submit(w http.ResponseWriter, r *http.Request, u *auth.User, env *queue.Envelope, msg []byte) {
	if !u.MaySendAs(env.From) {
		h.log.Warn("api: sender not allowed", zap.String("user", u.Name), zap.String("from", env.From))
		apiError(w, http.StatusForbidden, "sender_not_allowed", fmt.Sprintf("%s may not send as %q", u.Name, env.From))
		return
	}
	// Suppressed recipients are left out and reported (RFC 3463 X.1.1:
	// the address is known not to exist).
	var keep, suppressed []string
	for _, rc := range env.Rcpts {
		if h.o.IgnoreSuppressions {
			keep = append(keep, rc)
			continue
		}
		s, err := h.o.Queue.Suppressed(u.Name, rc)
		if err != nil {
			h.internal(w, r, "suppression lookup", err)
			return
		}
		if s == nil {
			keep = append(keep, rc)
			continue
		}
		suppressed = append(suppressed, rc)
		env.Suppressed = append(env.Suppressed, queue.SuppressedRcpt{Address: rc, Reply: s.Reply})
	}
	if len(keep) == 0 {
		// Nothing is queued: the events stand alone.
		events := make([]queue.Event, len(env.Suppressed))
		for i, r := range env.Suppressed {
			events[i] = queue.Event{Type: queue.EventSuppressed, Recipient: r.Address, User: u.Name,
				Tags: env.Tags, Metadata: env.Metadata, Reply: r.Reply}
		}
		if err := h.o.Queue.RecordEvents(events...); err != nil {
			h.internal(w, r, "record suppressed events", err)
			return
		}
		var b apiErrorBody
		b.Error.Code, b.Error.Message, b.Error.Suppressed = "all_recipients_suppressed",
			"every recipient is on the suppression list (an earlier message to it failed for good); nothing was queued", suppressed
		writeJSON(w, http.StatusUnprocessableEntity, b)
		return
	}
	env.Rcpts = keep
	if h.o.Limiter != nil {
		wait, what, limit := h.o.Limiter.TakeMessage(u.Name, len(keep), h.o.Now())
		switch {
		case wait < 0:
			apiError(w, http.StatusBadRequest, "too_many_recipients", fmt.Sprintf("%d recipients is more than the %s limit (%s) allows at once", len(keep), strings.ToLower(what), limit))
			return
		case wait > 0:
			secs := int64((wait + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
			apiError(w, http.StatusTooManyRequests, "rate_limited", fmt.Sprintf("%s limit reached (%s), try again in %ds", what, limit, secs))
			return
		}
	}

	proto := "HTTP"
	o := &submit.Origin{IP: clientIP(r), TLS: r.TLS, User: u, CheckHeaderFrom: true}
	if r.TLS != nil {
		proto = "HTTPS"
	}
	o.Protocol = proto
	br := submit.Readers.Get().(*bufio.Reader)
	cr := message.NewCRLFReader(bytes.NewReader(msg))
	br.Reset(cr)
	defer func() { br.Reset(nil); submit.Readers.Put(br); cr.Release() }()
	// The request's own context: a client that goes away before the
	// commit gets nothing queued, as an SMTP client cut off in DATA.
	id, size, err := h.o.Submitter.Submit(r.Context(), env, o, br)
	if err != nil {
		h.submitError(w, r, err)
		return
	}
	if h.o.Accepted != nil {
		h.o.Accepted("api", size)
	}
	h.log.Info("accepted", zap.String("listener", "api"), zap.String("id", id), zap.String("user", u.Name),
		zap.String("from", env.From), zap.Int("rcpts", len(env.Rcpts)), zap.Int64("size", size),
		zap.Strings("suppressed", suppressed))
	writeJSON(w, http.StatusAccepted, sendAnswer{ID: id, MessageID: env.MessageID, Suppressed: suppressed})
}

// submitError turns what Submit returned into the API's answer, in this
// one place. Nothing was queued.
func (h *sendHandler) submitError(w http.ResponseWriter, r *http.Request, err error) {
	if rj, ok := errors.AsType[*submit.Rejected](err); ok {
		if rj.From != nil {
			h.log.Warn("api: header sender not allowed", zap.Strings("from", rj.From), zap.Strings("sender", rj.Sender))
			apiError(w, http.StatusForbidden, "header_from_not_allowed", rj.Status.Message)
			return
		}
		apiError(w, http.StatusBadRequest, "message_refused", rj.Status.Message)
		return
	}
	switch {
	case errors.Is(err, submit.ErrHeaderSize):
		apiError(w, http.StatusRequestEntityTooLarge, "header_too_large", submit.ErrHeaderSize.Message)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EDQUOT):
		h.log.Error("api: queue storage full", zap.Error(err))
		w.Header().Set("Retry-After", "60")
		apiError(w, http.StatusServiceUnavailable, "insufficient_storage", "the server has no room for the message now; try again later")
	case errors.Is(err, queue.ErrClosed), errors.Is(err, context.Canceled) && r.Context().Err() == nil:
		w.Header().Set("Retry-After", "5")
		apiError(w, http.StatusServiceUnavailable, "shutting_down", "the server is shutting down; try again shortly")
	case r.Context().Err() != nil:
		// The client is gone; nobody reads this.
		apiError(w, http.StatusServiceUnavailable, "cancelled", "request cancelled")
	default:
		h.internal(w, r, "submit", err)
	}
}

// internal logs err and answers 500 without it: internal details are for
// the operator's log, not the client.
func (h *sendHandler) internal(w http.ResponseWriter, r *http.Request, what string, err error) {
	h.log.Error("api: "+what, zap.String("path", r.URL.Path), zap.Error(err))
	apiError(w, http.StatusInternalServerError, "internal_error", "internal error; the server's log says more")
}

// status is GET /v1/messages/{id}: the message's state per recipient, for
// its own user only (another user's message is not found).
func (h *sendHandler) status(w http.ResponseWriter, r *http.Request) {
	m, err := h.o.Queue.Get(r.PathValue("id"))
	if errors.Is(err, queue.ErrNotFound) || err == nil && m.Envelope.User != userOf(r).Name {
		apiError(w, http.StatusNotFound, "not_found", "no message "+strconv.Quote(r.PathValue("id"))+" (delivered messages are not kept)")
		return
	}
	if err != nil {
		h.internal(w, r, "get", err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (h *sendHandler) suppressions(w http.ResponseWriter, r *http.Request) {
	l, err := h.o.Queue.Suppressions(userOf(r).Name, false)
	if err != nil {
		h.internal(w, r, "suppressions", err)
		return
	}
	if l == nil {
		l = []queue.Suppression{}
	}
	writeJSON(w, http.StatusOK, l)
}

func (h *sendHandler) unsuppress(w http.ResponseWriter, r *http.Request) {
	a, err := submit.ParseAddress(r.PathValue("address"))
	if err != nil {
		apiError(w, http.StatusBadRequest, "invalid_address", strconv.Quote(r.PathValue("address"))+" is not an address: "+err.Error())
		return
	}
	// The form SMTP and the queue store it in (submit.ParseAddress).
	addr := a.String()
	err = h.o.Queue.Unsuppress(userOf(r).Name, addr)
	if errors.Is(err, queue.ErrNotFound) {
		apiError(w, http.StatusNotFound, "not_found", strconv.Quote(addr)+" is not suppressed")
		return
	}
	if err != nil {
		h.internal(w, r, "unsuppress", err)
		return
	}
	h.log.Info("api: suppression removed", zap.String("user", userOf(r).Name), zap.String("address", addr))
	w.WriteHeader(http.StatusNoContent)
}

// rawEnvelope is the envelope of a message/rfc822 request: ?from= and
// ?to= (repeated), or else the message's From, and To, Cc and Bcc.
func rawEnvelope(r *http.Request, msg []byte) (from string, rcpts []string, errs []FieldError) {
	bad := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	q := r.URL.Query()
	hdr := message.ParseHeader(msg)
	values := func(name string) []string {
		var out []string
		for _, f := range hdr.Fields {
			if strings.EqualFold(f.Name, name) {
				out = append(out, hdr.Value(f))
			}
		}
		return out
	}
	if q.Has("from") {
		from = q.Get("from")
		if from != "" { // from= (empty) is the null sender
			if a := parseMailbox(from, "from", bad); a != nil {
				from = a.Address
			}
		}
	} else {
		fs := values("From")
		list, err := parseList(fs)
		if err != nil || len(list) != 1 {
			bad("from", "no ?from= and the message's From field is not one address")
		} else if a := parseMailbox(list[0], "from", bad); a != nil {
			from = a.Address
		}
	}
	var raw []string
	field := "to"
	if q.Has("to") {
		raw = q["to"]
	} else {
		field = "header"
		for _, name := range []string{"To", "Cc", "Bcc"} {
			list, err := parseList(values(name))
			if err != nil {
				bad(strings.ToLower(name), "the %s field is not an address list: %v", name, err)
			}
			raw = append(raw, list...)
		}
	}
	seen := map[string]bool{}
	for i, s := range raw {
		if a := parseMailbox(s, fmt.Sprintf("%s[%d]", field, i), bad); a != nil && !seen[strings.ToLower(a.Address)] {
			seen[strings.ToLower(a.Address)] = true
			rcpts = append(rcpts, a.Address)
		}
	}
	if len(raw) == 0 {
		bad("to", "no ?to= and no To, Cc or Bcc field in the message")
	}
	if len(hdr.Fields) == 0 {
		bad("message", "the body is not a message: no header fields")
	}
	return from, rcpts, errs
}

// parseList reads address-list field values into single addresses, as
// strings parseMailbox takes.
func parseList(values []string) ([]string, error) {
	var out []string
	for _, v := range values {
		list, err := mail.ParseAddressList(v)
		if err != nil {
			return nil, err
		}
		for _, a := range list {
			out = append(out, a.String())
		}
	}
	return out, nil
}

func describe(errs []FieldError) string {
	parts := make([]string, len(errs))
	for i, e := range errs {
		if e.Field == "" {
			parts[i] = e.Message
		} else {
			parts[i] = e.Field + ": " + e.Message
		}
	}
	return strings.Join(parts, "; ")
}

func clientIP(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	ip, _ := netip.ParseAddr(host)
	return ip.Unmap()
}

// keyLocks is a mutex per idempotency key, dropped when nobody holds it.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	sync.Mutex
	n int
}

func (k *keyLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{}
		k.m[key] = l
	}
	l.n++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.n--; l.n == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
