package fleetlock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The FleetLock protocol (Fedora CoreOS's Zincati): a client POSTs its
// id and group to /v1/pre-reboot to take a slot before rebooting, and to
// /v1/steady-state to give it back once it is up again; every request
// carries the header fleet-lock-protocol: true; 200 is success, anything
// else an error {"kind": …, "value": …}.
const (
	PreRebootPath   = "/v1/pre-reboot"
	SteadyStatePath = "/v1/steady-state"
	ProtocolHeader  = "fleet-lock-protocol"
)

// Request is a FleetLock request body.
type Request struct {
	ClientParams ClientParams `json:"client_params"`
}

// ClientParams name the client.
type ClientParams struct {
	ID    string `json:"id"`
	Group string `json:"group"`
}

// Error is a FleetLock error body.
type Error struct {
	Kind  string `json:"kind"`
	Value string `json:"value"`
}

func (e *Error) Error() string { return e.Kind + ": " + e.Value }

// httpSlot is a slot from a FleetLock server.
type httpSlot struct {
	base string
	c    Config
	hc   *http.Client
}

func newHTTPSlot(c Config) *httpSlot {
	return &httpSlot{base: strings.TrimSuffix(c.URL, "/"), c: c, hc: &http.Client{Timeout: 30 * time.Second}}
}

func (s *httpSlot) Close() error { return nil }

func (s *httpSlot) post(ctx context.Context, path string) error {
	body, _ := json.Marshal(Request{ClientParams{ID: s.c.ID, Group: s.c.Group}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set(ProtocolHeader, "true")
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.hc.Do(req)
	if err != nil {
		return fmt.Errorf("FleetLock %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e Error
	if json.Unmarshal(b, &e) != nil || e.Kind == "" {
		e = Error{Kind: "http_" + fmt.Sprint(resp.StatusCode), Value: strings.TrimSpace(string(b))}
	}
	return fmt.Errorf("FleetLock %s: %s: %w", path, resp.Status, &e)
}

// Acquire implements Slot: POST /v1/pre-reboot until the server grants a
// slot. A refusal is asked again after the poll interval, as Zincati
// does; a server that cannot be reached fails the acquire.
func (s *httpSlot) Acquire(ctx context.Context) error {
	for {
		err := s.post(ctx, PreRebootPath)
		var e *Error
		if err == nil || !errors.As(err, &e) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ctx.Err(), err)
		case <-time.After(s.c.poll()):
		}
	}
}

// Release implements Slot: POST /v1/steady-state.
func (s *httpSlot) Release(ctx context.Context) error { return s.post(ctx, SteadyStatePath) }

// NewServer is a FleetLock server handing out the slots of the etcd
// semaphores through cli: each group has slots slots (set by its first
// holder) and each holder a lease of ttl. It exists to exercise the
// client against the same lock the etcd client takes; airlock is the
// production server.
func NewServer(cli *clientv3.Client, slots int, ttl time.Duration) http.Handler {
	mux := http.NewServeMux()
	handle := func(path string, do func(*Semaphore, context.Context) error) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			fail := func(code int, kind, value string) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				json.NewEncoder(w).Encode(Error{Kind: kind, Value: value})
			}
			if r.Method != http.MethodPost {
				fail(http.StatusMethodNotAllowed, "bad_method", "POST only")
				return
			}
			if r.Header.Get(ProtocolHeader) != "true" {
				fail(http.StatusBadRequest, "missing_header", "fleet-lock-protocol: true is required")
				return
			}
			var req Request
			if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil || req.ClientParams.ID == "" {
				fail(http.StatusBadRequest, "bad_request", "client_params with an id is required")
				return
			}
			group := req.ClientParams.Group
			if group == "" {
				group = DefaultGroup
			}
			sem := NewSemaphore(cli, Config{Group: group, ID: req.ClientParams.ID, Slots: slots, TTLSeconds: int64(ttl / time.Second)})
			switch err := do(sem, r.Context()); {
			case err == nil:
				w.WriteHeader(http.StatusOK)
			case errors.Is(err, ErrBusy):
				fail(http.StatusConflict, "failed_lock", err.Error())
			default:
				fail(http.StatusInternalServerError, "etcd_error", err.Error())
			}
		})
	}
	handle(PreRebootPath, (*Semaphore).TryAcquire)
	handle(SteadyStatePath, (*Semaphore).Release)
	return mux
}
