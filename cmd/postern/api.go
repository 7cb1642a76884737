package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"

	"postern/relay/httpapi"
	"postern/relay/smtpd"
	pipeline "postern/relay/submit"
)

// listenAPI binds listen.api (over TLS with the SMTP listeners'
// certificate when api.tls is set) and makes its server; the handler is
// set once the submission pipeline exists.
func (s *server) listenAPI() (net.Listener, error) {
	cfg := s.cfg
	ln, err := net.Listen("tcp", cfg.Listen.API)
	if err != nil {
		return nil, fmt.Errorf("listen.api: %w", err)
	}
	if cfg.API.TLS {
		ln = tls.NewListener(ln, s.certs.Config())
	}
	s.api = &http.Server{
		// A header in 10 s; a body of max_message_size from a slow
		// client in minutes, as SMTP's DATA timeout allows.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       cfg.Timeouts.Data.D(),
		WriteTimeout:      cfg.Timeouts.Data.D() + time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(s.log.Named("api")),
	}
	s.log.Info("listening", zap.String("listener", "api"), zap.Stringer("addr", ln.Addr()), zap.Bool("tls", cfg.API.TLS))
	return ln, nil
}

// apiHandler is the send API over the same pipeline, users, limits and
// metrics as SMTP submission.
func (s *server) apiHandler(submit *pipeline.Pipeline, policy *smtpd.Policy) http.Handler {
	cfg := s.cfg
	return httpapi.NewSendHandler(httpapi.SendOptions{
		Queue:          s.queue,
		Submitter:      submit,
		Keys:           s.users,
		Limiter:        policy,
		MaxMessageSize: int64(cfg.Limits.MaxMessageSize),
		MaxRecipients:  cfg.Limits.MaxRecipients,
		Accepted:       s.metrics.Accepted,
		Logger:         s.log,
		Listen:         cfg.Listen.API,
		AllowedHosts:   cfg.API.AllowedHosts,
		Hostname:       cfg.Hostname,
	})
}
