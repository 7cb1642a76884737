package httpapi

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"postern/queue"
	"postern/relay/submit"
)

// Suppressions is what the admin API needs of the suppression list.
// *queue.Queue implements it. Users are authenticated user names; ""
// is mail without AUTH (the relay listener). Suppress and Unsuppress
// commit before they return; Unsuppress wraps queue.ErrNotFound when
// there was nothing to remove.
type Suppressions interface {
	// Suppressions lists one user's live suppressions, or every user's
	// when all is true, in address order.
	Suppressions(user string, all bool) ([]queue.Suppression, error)
	Suppress(s queue.Suppression) error
	Unsuppress(user, addr string) error
}

var _ Suppressions = (*queue.Queue)(nil)

// mountSuppressions adds the /api/suppressions endpoints to api. Without
// Options.Suppressions they are not there (404).
func (h *handler) mountSuppressions(api *http.ServeMux) {
	if h.sups == nil {
		return
	}
	api.Handle("/api/suppressions", methods(h.listSuppressions, http.MethodGet))
	api.Handle("/api/suppressions/{address}", methods(h.changeSuppression, http.MethodPut, http.MethodDelete))
}

// listSuppressions serves GET /api/suppressions: every user's without a
// user parameter; ?user=U for one user's, ?user= for the relay
// listener's.
func (h *handler) listSuppressions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ss, err := h.sups.Suppressions(q.Get("user"), !q.Has("user"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if ss == nil {
		ss = []queue.Suppression{} // "[]", not "null"
	}
	writeJSON(w, http.StatusOK, ss)
}

// changeSuppression serves PUT (add or replace a manual suppression) and
// DELETE on /api/suppressions/{address}?user=U (no user parameter: the
// relay listener's list).
func (h *handler) changeSuppression(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	a, err := submit.ParseAddress(r.PathValue("address"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad address "+strconv.Quote(r.PathValue("address"))+": "+err.Error())
		return
	}
	if strings.ContainsRune(user, 0) {
		writeError(w, http.StatusBadRequest, "bad user name")
		return
	}
	addr := a.String()
	action := "suppress"
	if r.Method == http.MethodDelete {
		action = "unsuppress"
		err = h.sups.Unsuppress(user, addr)
	} else {
		err = h.sups.Suppress(queue.Suppression{User: user, Address: addr, Reason: queue.SuppressManual, Created: time.Now()})
	}
	log := []zap.Field{zap.String("remote", r.RemoteAddr), zap.String("action", action),
		zap.String("user", user), zap.String("address", addr)}
	if err != nil {
		h.log.Info("admin: action failed", append(log, zap.Error(err))...)
		if statusOf(err) == http.StatusNotFound {
			writeError(w, http.StatusNotFound, addr+" is not suppressed for "+userLabel(user))
			return
		}
		h.fail(w, r, err)
		return
	}
	h.log.Info("admin: action", log...)
	writeJSON(w, http.StatusOK, struct {
		User    string `json:"user"`
		Address string `json:"address"`
		Action  string `json:"action"`
	}{user, addr, action})
}

// userLabel names a suppression list's owner in messages.
func userLabel(user string) string {
	if user == "" {
		return "mail without AUTH (the relay listener)"
	}
	return "user " + user
}
