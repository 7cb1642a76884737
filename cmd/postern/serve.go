package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"postern/auth"
	"postern/configs"
	"postern/dkim"
	"postern/queue"
	"postern/relay/acme"
	"postern/relay/bounces"
	"postern/relay/certs"
	"postern/relay/httpapi"
	"postern/relay/limits"
	"postern/relay/metrics"
	"postern/relay/outbound"
	"postern/relay/pickup"
	"postern/relay/smtpd"
	"postern/relay/tlspolicy"
	"postern/relay/webhooks"
	// Named: the end-to-end tests have a func submit.
	pipeline "postern/relay/submit"
)

func cmdServe(args []string, stderr io.Writer) error {
	fs, cfgFlag := newFlags("serve")
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("serve takes no arguments, got %q", pos)
	}
	cfg, err := loadConfig(*cfgFlag)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	tuneGC()
	if f := os.Getenv("POSTERN_CPUPROFILE"); f != "" {
		// For profiling the daemon under load (make bench, BENCH_PROFILE):
		// the profile covers start-up to shutdown.
		stop, err := startCPUProfile(f)
		if err != nil {
			return err
		}
		defer stop()
	}
	return serve(cfg, log)
}

// GC defaults for the daemon, each unless its environment variable is set.
// postern's live heap is a few MiB even under load (sessions stream, the
// queue is on disk), so Go's default GOGC=100 collects every few MiB
// allocated: every 40 or so messages, a fifth of the CPU with 20
// sessions (make bench: 2,950 → 3,800 msg/s at 4 KiB with GOGC=400, for
// 12 MiB more RSS). The soft limit makes the collector work harder
// instead once the heap nears it, so that the larger GOGC does not
// multiply the memory of a large load.
const (
	defaultGOGC     = 400
	defaultMemLimit = 256 << 20
)

func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemLimit)
	}
}

func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("POSTERN_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("POSTERN_CPUPROFILE: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// server is everything serve starts, so that it can be stopped in order.
type server struct {
	cfg   *configs.Config
	log   *zap.Logger
	certs *certs.Store
	// acme, with tls.acme, obtains and renews the certificates certs
	// serves; stopped at shutdown.
	acme   *acme.Manager
	users  *auth.Store
	signer atomic.Pointer[dkim.Signer]
	queue  queue.Backend
	// deliverer keeps idle connections to MX hosts and smarthosts; it is
	// closed after the queue, when no attempt can use it any more.
	deliverer queue.Deliverer
	smtp      []*smtpd.Server
	// bounceMX is listen.mx's server (nil when off).
	bounceMX *bounces.MX
	// pickup queues what sendmail left in the maildrop; it stops before
	// the queue closes.
	pickup *pickup.Pickup
	admin  *http.Server
	// api is the send API (listen.api); it stops with the SMTP listeners.
	api     *http.Server
	metrics *metrics.Metrics
	// shared is limits.redis (nil when unset); closed after the queue.
	shared *limits.Redis
	// tlsPolicies and tlsReports are the outbound TLS policy (MTA-STS
	// cache, DANE, configured policies) and the TLS reporter; their
	// background loops run under tlsCancel and stop before the queue
	// closes (the reporter's last flush writes to it).
	tlsPolicies *tlspolicy.Policies
	tlsReports  *tlspolicy.Reporter
	tlsCancel   context.CancelFunc
	tlsWG       sync.WaitGroup
	// webhooks posts the queue's events; it stops before the queue
	// closes.
	webhooks *webhooks.Manager
	// ready is true between start-up and the beginning of shutdown or
	// of a drain (/readyz).
	ready atomic.Bool
	// drainer is postern drain's state (drain.go).
	drainer *drainState
	wg      sync.WaitGroup
}

func serve(cfg *configs.Config, log *zap.Logger) error {
	s := &server{cfg: cfg, log: log, drainer: newDrainState()}
	logEffectiveConfig(cfg, log)

	// Search permission for others (o+x, no r): local users' sendmail
	// reaches the maildrop in it by name. Everything else postern keeps
	// there is 0600, or in a 0700 directory.
	if err := os.MkdirAll(cfg.DataDir, 0o711); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	// The maildrop's modes are set right, or serve refuses to start: see
	// pickup.Prepare.
	changed, err := pickup.Prepare(cfg.MaildropDir())
	for _, c := range changed {
		if c.Warn {
			log.Warn("maildrop: " + c.Text)
		} else {
			log.Info("maildrop: " + c.Text)
		}
	}
	if err != nil {
		return fmt.Errorf("maildrop: %w", err)
	}

	if w := hostnameWarning(cfg); w != "" {
		log.Warn(w)
	}
	s.certs, err = certs.Load(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.DataDir, cfg.Hostname)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	switch {
	case cfg.TLS.ACME != nil:
		// Built now, started once every listener is bound: a start-up
		// that fails later leaves no renewal running.
		s.acme, err = newACME(cfg, log)
		if err != nil {
			return fmt.Errorf("tls.acme: %w", err)
		}
		s.certs.SetSource(s.acme)
	case s.certs.Generated:
		log.Warn("no tls.cert_file configured: using a self-signed certificate; clients that verify certificates will refuse it",
			zap.String("hostname", cfg.Hostname))
	}

	s.metrics = metrics.NewMetrics()
	// Users matter only where AUTH is offered, and their keys on the API.
	if cfg.Auth.UsersFile != "" && (cfg.Listen.Submission != "" || cfg.Listen.Submissions != "" || cfg.Listen.API != "") {
		s.users, err = auth.NewStore(cfg.Auth.UsersFile, cfg.Auth.KeysFile, log)
		if err != nil {
			return fmt.Errorf("auth: %w", err)
		}
		s.users.CacheTTL = cfg.Auth.CacheTTL.D()
		s.users.CacheSize = cfg.Auth.CacheSize
		s.users.Observer = s.metrics
	}

	if err := s.loadDKIM(); err != nil {
		return err
	}
	adminToken, err := readAdminToken(cfg.Admin.TokenFile)
	if err == nil && adminToken == "" && cfg.Listen.Admin != "" {
		adminToken, err = ensureAdminToken(cfg)
	}
	if err != nil {
		return err
	}

	hooks, subscribers, err := webhookEndpoints(cfg)
	if err != nil {
		return err
	}
	tokens, err := bounceTokens(cfg)
	if err != nil {
		return err
	}
	// The shared store before delivery: the Shaper shapes through it.
	if err := s.openShared(); err != nil {
		return err
	}
	mx, mxd, err := newDeliverer(cfg, log, s.sharedShaping())
	if err != nil {
		return err
	}
	s.deliverer = mx
	// Delivery to the network shapes what the queue may start, and shows
	// how (capture mode does neither).
	gate, _ := mx.(queue.Gate)
	dests, _ := mx.(httpapi.Destinations)
	s.queue, err = openQueue(cfg, queue.Options{
		Path:      cfg.QueuePath(),
		SpoolDir:  cfg.SpoolDir(),
		Deliverer: mx,
		Workers:   cfg.Delivery.Workers,
		Retry: queue.Retry{
			Initial:  cfg.Delivery.Retry.Initial.D(),
			Max:      cfg.Delivery.Retry.Max.D(),
			Lifetime: cfg.Delivery.Retry.Lifetime.D(),
		},
		Hostname:     cfg.Hostname,
		DelayWarning: cfg.Delivery.DelayWarning.D(),
		KeepFailed:   cfg.Delivery.KeepFailed.D(),
		Suppression: queue.SuppressionOptions{
			Enabled: cfg.Suppression.Enabled, ExpireAfter: cfg.Suppression.ExpireAfter.D(),
		},
		Bounces:     bounceOptions(cfg, tokens),
		Observer:    s.metrics,
		Gate:        gate,
		Logger:      slogOf(log),
		Signer:      bounceSigner{s},
		Subscribers: subscribers,
	})
	if err != nil {
		return err
	}
	s.metrics.WatchQueue(s.queue)
	s.metrics.WatchWebhooks(s.queue)
	if dests != nil {
		s.metrics.WatchDestinations(dests)
	}

	// Bind every listener before serving any, so a port in use is a clean
	// start-up error rather than a half-running server.
	type bound struct {
		srv *smtpd.Server
		l   net.Listener
	}
	var listeners []bound
	closeAll := func() {
		for _, b := range listeners {
			b.l.Close()
		}
	}
	// One policy for every listener: its counters (the connection cap,
	// per-client and per-user limits, the AUTH throttle) count across
	// listeners.
	policy := newRelayPolicy(cfg)
	s.shareLimits(policy)
	// With the list off, nothing is suppressed at RCPT either: entries
	// already on disk wait, unused, until it is turned back on.
	var sups smtpd.Suppressions
	if cfg.Suppression.Enabled {
		sups = s.queue
	}
	for _, l := range []struct {
		kind smtpd.Kind
		addr string
	}{
		{smtpd.Submission, cfg.Listen.Submission},
		{smtpd.Submissions, cfg.Listen.Submissions},
		{smtpd.TrustedRelay, cfg.Listen.Relay},
	} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			closeAll()
			s.queue.Close(context.Background())
			return fmt.Errorf("listen.%s: %w", l.kind, err)
		}
		srv := smtpd.NewServer(smtpd.Options{
			Kind:            l.kind,
			Hostname:        cfg.Hostname,
			TLS:             s.certs.Config(),
			MaxMessageBytes: int64(cfg.Limits.MaxMessageSize),
			MaxRecipients:   cfg.Limits.MaxRecipients,
			Trusted:         cfg.TrustedPrefixes(),
			Auth:            s.authenticator(),
			Queue:           s.queue,
			Suppressions:    sups,
			Signer:          s.currentSigner,
			Logger:          log,
			Observer:        s.metrics,
			CommandTimeout:  cfg.Timeouts.Command.D(),
			DataTimeout:     cfg.Timeouts.Data.D(),
			IdleTimeout:     cfg.Timeouts.Idle.D(),
			Policy:          policy,
		})
		listeners = append(listeners, bound{srv, ln})
		s.smtp = append(s.smtp, srv)
		log.Info("listening", zap.String("listener", l.kind.String()), zap.Stringer("addr", ln.Addr()))
	}
	var mxLn net.Listener
	if cfg.Listen.MX != "" {
		mxLn, err = net.Listen("tcp", cfg.Listen.MX)
		if err != nil {
			closeAll()
			s.queue.Close(context.Background())
			return fmt.Errorf("listen.mx: %w", err)
		}
		s.bounceMX = bounces.NewMX(bounces.MXOptions{
			Hostname: cfg.Hostname, Tokens: tokens, Queue: s.queue, TLS: s.certs.Config(),
			// A report with RET=FULL carries the whole original.
			MaxMessageBytes: int64(cfg.Limits.MaxMessageSize) + 64<<10,
			Logger:          log,
		})
		log.Info("listening", zap.String("listener", "mx"), zap.Stringer("addr", mxLn.Addr()),
			zap.String("bounce_domain", tokens.Domain()))
	}
	var adminLn net.Listener
	if cfg.Listen.Admin != "" {
		adminLn, err = net.Listen("tcp", cfg.Listen.Admin)
		if err != nil {
			closeAll()
			if mxLn != nil {
				mxLn.Close()
			}
			s.queue.Close(context.Background())
			return fmt.Errorf("listen.admin: %w", err)
		}
		if cfg.Admin.TLS {
			// The same certificate as SMTP, reloaded with it on SIGHUP.
			adminLn = tls.NewListener(adminLn, s.certs.Config())
		}
		s.admin = &http.Server{
			Handler: httpapi.NewHandler(httpapi.Options{
				Queue: s.queue, Suppressions: s.queue, Webhooks: s.queue, Token: adminToken, Ready: s.readiness, Metrics: s.metrics.Handler(), Logger: log,
				Listen: cfg.Listen.Admin, AllowedHosts: cfg.Admin.AllowedHosts, Hostname: cfg.Hostname,
				Destinations: dests, Drainer: s,
			}),
			ReadHeaderTimeout: 10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       2 * time.Minute,
		}
		log.Info("listening", zap.String("listener", "admin"), zap.Stringer("addr", adminLn.Addr()))
	}
	var apiLn net.Listener
	if cfg.Listen.API != "" {
		apiLn, err = s.listenAPI()
		if err != nil {
			if adminLn != nil {
				adminLn.Close()
			}
			if mxLn != nil {
				mxLn.Close()
			}
			closeAll()
			s.queue.Close(context.Background())
			return err
		}
	}

	if s.acme != nil {
		if err := s.acme.Start(); err != nil {
			closeAll()
			s.queue.Close(context.Background())
			return fmt.Errorf("tls.acme: %w", err)
		}
		log.Info("TLS certificates from ACME: served once obtained, the self-signed one until then",
			zap.Strings("names", cfg.CertNames()), zap.String("directory", cfg.TLS.ACME.Directory),
			zap.String("challenge", cfg.TLS.ACME.Challenge))
	}
	// Drops and TLS reports are queued as if their owner had used the
	// relay listener: the same header rules and limits.
	local := pipeline.New(pipeline.Options{
		Hostname: cfg.Hostname, Queue: s.queue, Signer: s.currentSigner,
		FixHeaders: policy.FixHeaders, MaxReceived: policy.MaxReceived,
	})
	if err := s.startTLSPolicy(local); err != nil {
		closeAll()
		s.queue.Close(context.Background())
		return err
	}
	if apiLn != nil {
		s.api.Handler = s.apiHandler(local, policy)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.api.Serve(apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("api listener stopped", zap.Error(err))
			}
		}()
	}
	// MX delivery follows the TLS policies from its first attempt: the
	// queue starts delivering only now, so that no message queued before
	// a restart goes out under less than its domain's policy.
	if mxd != nil {
		var rec outbound.TLSRecorder
		if s.tlsReports != nil { // a nil *Reporter is not a nil recorder
			rec = s.tlsReports
		}
		mxd.UseTLSPolicies(s.tlsPolicies, rec)
	}
	s.queue.Start()
	s.pickup = pickup.New(pickup.Options{
		Dir:    cfg.MaildropDir(),
		Submit: local,
		Limits: maildropLimits(cfg),
		Logger: slogOf(log),
	})
	s.pickup.Start()
	s.webhooks = webhooks.New(webhooks.Options{Source: s.queue, Endpoints: hooks, Observer: s.metrics, Logger: log})
	s.webhooks.Start()
	for _, b := range listeners {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := b.srv.Serve(b.l); err != nil {
				log.Error("listener stopped", zap.Error(err))
			}
		}()
	}
	if s.bounceMX != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.bounceMX.Serve(mxLn); err != nil {
				log.Error("mx listener stopped", zap.Error(err))
			}
		}()
	}
	if s.admin != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.admin.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener stopped", zap.Error(err))
			}
		}()
	}
	// Signals are caught before "started" is announced: a SIGHUP sent right
	// after that line must reload, not kill the process.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	s.ready.Store(true)
	log.Info("postern started", zap.String("version", version))
	notify := func(state string) {
		if err := sdNotify(state); err != nil {
			log.Warn("could not notify the service manager ($NOTIFY_SOCKET)", zap.String("state", state), zap.Error(err))
		}
	}
	notify("READY=1")
	for stop := false; !stop; {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				s.reload()
				continue
			}
			log.Info("stopping", zap.Stringer("signal", sig))
			stop = true
		case <-s.drainer.requested: // postern drain, through the admin API
			notify("STOPPING=1")
			return s.drain(sigs)
		}
	}
	notify("STOPPING=1")
	return s.shutdown()
}

// shutdown stops in the order that loses nothing and duplicates nothing:
//
//  1. No new delivery attempt starts (queue.StopDelivery); attempts in
//     flight go on.
//  2. The listeners stop accepting; sessions with no transaction open are
//     closed at once, the others finish their message (a session cut off
//     before its 250 has not had the message acknowledged, so the client
//     still holds it), within shutdown_timeout. Then the maildrop's pickup
//     stops (a drop it had not queued stays in the maildrop).
//  3. The queue closes once the attempts in flight have ended, within a
//     budget of its own: shutdown_timeout from the signal, running while
//     the sessions finish, not after them. An attempt still running then
//     is cut off and keeps its lease: it is retried after the next start,
//     which may deliver that one message twice, never lose it. Just
//     before, the webhook senders stop, within that same budget: a request
//     cut off records nothing, so its event is posted again after the
//     next start (at least once).
//
// An idle client (a connection pool) no longer uses up the time the
// deliveries in flight needed to end cleanly.
func (s *server) shutdown() error {
	s.ready.Store(false)
	budget := s.cfg.ShutdownTimeout.D()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	queueCtx, queueCancel := context.WithTimeout(context.Background(), budget)
	defer queueCancel()
	s.queue.StopDelivery()
	var wg sync.WaitGroup
	for _, srv := range s.smtp {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Shutdown(ctx); err != nil {
				s.log.Warn("sessions cut off at shutdown", zap.Error(err))
			}
		}()
	}
	if s.bounceMX != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.bounceMX.Shutdown(ctx); err != nil {
				s.log.Warn("mx sessions cut off at shutdown", zap.Error(err))
			}
		}()
	}
	if s.api != nil {
		// Requests in the middle of a message finish (their 202 means
		// queued); new ones are refused.
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.api.Shutdown(ctx); err != nil {
				s.log.Warn("api requests cut off at shutdown", zap.Error(err))
			}
		}()
	}
	if s.admin != nil {
		s.admin.Shutdown(ctx)
	}
	wg.Wait()
	s.pickup.Stop(ctx)
	s.wg.Wait()
	s.tlsCancel()
	s.tlsWG.Wait()
	s.webhooks.Stop(queueCtx)
	err := s.queue.Close(queueCtx)
	if c, ok := s.deliverer.(io.Closer); ok {
		c.Close()
	}
	// After the queue: attempts still running at its close release
	// their shared connection slots through the store.
	s.shared.Close()
	if s.acme != nil {
		s.acme.Stop()
	}
	s.log.Info("postern stopped")
	return err
}

// newACME builds the certificate manager tls.acme asks for. The dns-01
// hook's record is looked for through delivery.resolver, the DNS server
// the rest of postern asks.
func newACME(cfg *configs.Config, log *zap.Logger) (*acme.Manager, error) {
	a := cfg.TLS.ACME
	return acme.New(acme.Options{
		Names:           cfg.CertNames(),
		Email:           a.Email,
		Directory:       a.Directory,
		Challenge:       a.Challenge,
		ChallengeListen: a.ChallengeListen,
		DNSHook:         a.DNSHook,
		Resolver:        cfg.Delivery.Resolver,
		StorageDir:      cfg.ACMEDir(),
		Logger:          log.Named("acme"),
	})
}

// startTLSPolicy makes the outbound TLS policy and the TLS reporter and
// starts their background loops: the MTA-STS refresher, and the
// reporter's flush and daily send.
func (s *server) startTLSPolicy(local *pipeline.Pipeline) error {
	var err error
	s.tlsPolicies, err = newTLSPolicies(s.cfg, s.queue, s.log)
	if err != nil {
		return fmt.Errorf("delivery TLS policy: %w", err)
	}
	s.tlsReports, err = newTLSReporter(s.cfg, s.queue, local, s.log)
	if err != nil {
		return fmt.Errorf("delivery.tls_reports: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.tlsCancel = cancel
	s.tlsWG.Add(1)
	go func() { defer s.tlsWG.Done(); s.tlsPolicies.Run(ctx) }()
	if s.tlsReports != nil {
		s.tlsWG.Add(1)
		go func() { defer s.tlsWG.Done(); s.tlsReports.Run(ctx) }()
	}
	return nil
}

// maildropLimits are the relay listener's limits, which the pickup applies
// to drops as well, and sendmail before it leaves one.
func maildropLimits(cfg *configs.Config) pickup.Limits {
	return pickup.Limits{
		MaxMessageBytes:  int64(cfg.Limits.MaxMessageSize),
		MaxRecipients:    cfg.Limits.MaxRecipients,
		SenderDomains:    cfg.Relay.AllowedSenderDomains,
		RecipientDomains: cfg.Relay.AllowedRecipientDomains,
	}
}

// reload is SIGHUP: certificate, users, application passwords and DKIM
// keys are read again, and the cache of verified passwords is emptied;
// what fails to load keeps the old version in service.
func (s *server) reload() {
	s.log.Info("reloading (SIGHUP)")
	if err := s.certs.Reload(); err != nil {
		s.log.Error("keeping the old TLS certificate", zap.Error(err))
	}
	if s.users != nil {
		if err := s.users.Reload(); err != nil {
			s.log.Error("keeping the old users", zap.Error(err))
		}
	}
	if err := s.loadDKIM(); err != nil {
		s.log.Error("keeping the old DKIM keys", zap.Error(err))
	}
}

func (s *server) loadDKIM() error {
	keys, warnings, errs := dkim.LoadKeys(dkimKeyConfigs(s.cfg))
	for _, w := range warnings {
		s.log.Warn("dkim: " + w)
	}
	if len(errs) > 0 {
		return fmt.Errorf("dkim: %w", errors.Join(errs...))
	}
	s.signer.Store(dkim.NewSigner(keys))
	for _, k := range keys {
		s.log.Info("dkim key loaded", zap.String("domain", k.Domain), zap.String("selector", k.Selector), zap.String("algorithm", k.Algorithm))
	}
	return nil
}

func dkimKeyConfigs(cfg *configs.Config) []dkim.KeyConfig {
	var out []dkim.KeyConfig
	for _, k := range cfg.DKIM.Keys {
		out = append(out, dkim.KeyConfig{Domain: k.Domain, Selector: k.Selector, KeyFile: k.KeyFile, SignSubdomains: k.SignSubdomains})
	}
	return out
}

// bounceSigner signs the queue's DSNs, from MAILER-DAEMON@hostname, with
// the DKIM keys of the hostname's domain (dkim.Signer.ForHost), the ones
// in service at the time: SIGHUP reloads them for bounces too.
type bounceSigner struct{ s *server }

func (b bounceSigner) Sign(msg io.Reader) ([]byte, error) {
	return b.s.signer.Load().ForHost(b.s.cfg.Hostname).Sign(msg)
}

func (s *server) currentSigner() smtpd.Signer {
	if sg := s.signer.Load(); sg != nil {
		return sg
	}
	return nil
}

// authenticator returns the users store as the session's interface, or nil
// when no users file is configured (only the relay listener runs then).
func (s *server) authenticator() smtpd.Authenticator {
	if s.users == nil {
		return nil
	}
	return s.users
}

// readiness is /readyz: listeners up and the queue open.
func (s *server) readiness() error {
	if s.draining() {
		return errors.New("draining")
	}
	if !s.ready.Load() {
		return errors.New("starting or shutting down")
	}
	return nil
}

// logEffectiveConfig logs the configuration in force, so an operator sees
// what defaults filled in (STYLE habit 11). It holds no secrets: passwords
// live in the users file, keys in their files.
func logEffectiveConfig(cfg *configs.Config, log *zap.Logger) {
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return
	}
	log.Info("effective configuration", zap.String("file", cfg.File), zap.String("config", string(out)))
}
