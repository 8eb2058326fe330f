package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// devSupervisor runs the dev cluster's node processes. Before the cluster
// is up, a node that exits fails the start (reported on failed). After,
// a node that exits is started again, up to devMaxRestarts times within
// devRestartWindow, so that `make run` keeps a cluster running and Ctrl-C
// still stops everything.
type devSupervisor struct {
	self string
	lay  *devLayout
	dir  string
	ctx  context.Context

	failed      chan string
	failedEarly atomic.Value
	ready       atomic.Bool
	stopping    atomic.Bool

	mu    sync.Mutex
	procs map[int]*exec.Cmd
	wg    sync.WaitGroup
}

const (
	devMaxRestarts   = 5
	devRestartWindow = time.Minute
)

// start starts node i and watches it.
func (s *devSupervisor) start(i int) error {
	id := fmt.Sprintf("n%d", i+1)
	logPath := filepath.Join(s.dir, id, "cofferd.log")
	var restarts []time.Time
	run := func() (*exec.Cmd, *os.File, error) {
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, nil, err
		}
		p := exec.Command(s.self, "serve", "--config", s.lay.configs[i])
		p.Stdout, p.Stderr = logf, logf
		p.Env = os.Environ()
		if s.lay.softhsmConf != "" {
			// SoftHSM2 finds its tokens through this variable, read once
			// when the node loads the library.
			p.Env = setEnv(p.Env, "SOFTHSM2_CONF", s.lay.softhsmConf)
		}
		// Children do not get the terminal's Ctrl-C directly: the parent
		// stops them in order.
		p.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := p.Start(); err != nil {
			_ = logf.Close()
			return nil, nil, fmt.Errorf("start %s: %w", id, err)
		}
		s.mu.Lock()
		if s.procs == nil {
			s.procs = map[int]*exec.Cmd{}
		}
		s.procs[i] = p
		s.mu.Unlock()
		return p, logf, nil
	}
	p, logf, err := run()
	if err != nil {
		return err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			err := p.Wait()
			_ = logf.Close()
			if s.ctx.Err() != nil || s.stopping.Load() {
				return
			}
			if !s.ready.Load() {
				fmt.Printf("node %s exited while starting (%v); see %s\n", id, err, logPath)
				s.failed <- id
				return
			}
			now := time.Now()
			for len(restarts) > 0 && now.Sub(restarts[0]) > devRestartWindow {
				restarts = restarts[1:]
			}
			if len(restarts) >= devMaxRestarts {
				fmt.Printf("node %s exited again (%v): %d restarts within %v, not restarting it; see %s\n", id, err, len(restarts), devRestartWindow, logPath)
				return
			}
			restarts = append(restarts, now)
			fmt.Printf("node %s exited unexpectedly (%v); restarting it (see %s)\n", id, err, logPath)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if p, logf, err = run(); err != nil {
				fmt.Printf("node %s could not be restarted: %v\n", id, err)
				return
			}
		}
	}()
	return nil
}

// stopAll stops every node in order and waits for the watchers.
func (s *devSupervisor) stopAll() {
	s.stopping.Store(true)
	s.mu.Lock()
	var procs []*exec.Cmd
	for i := 0; i < len(s.lay.configs); i++ {
		if p := s.procs[i]; p != nil {
			procs = append(procs, p)
		}
	}
	s.mu.Unlock()
	stopAll(procs)
	s.wg.Wait()
}

func stopAll(procs []*exec.Cmd) {
	for _, p := range procs {
		if p.Process != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, p := range procs {
		for p.ProcessState == nil && time.Now().Before(deadline) {
			if err := p.Process.Signal(syscall.Signal(0)); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			_ = p.Process.Kill()
		}
	}
}

// setEnv returns env with key set to value, replacing any earlier setting.
func setEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}
