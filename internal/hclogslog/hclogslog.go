// Package hclogslog adapts a *slog.Logger to hclog.Logger, so that the
// HashiCorp libraries that log through hclog (raft, its network transport,
// raft-autopilot) write through the process's slog handler, with the
// attributes of the slog logger they were given (a node's id, for one).
//
// go-hclog (v1.6.3, the version in go.mod) has no slog bridge of its own.
//
// The contract:
//
//   - A record goes to the slog handler at the matching slog level (Trace is
//     slog.LevelDebug-4; Debug, Info, Warn and Error are slog's; NoLevel is
//     Info) if it is at or above the adapter's level and the handler is
//     enabled for it. Off drops everything.
//   - Every record carries the slog logger's attributes, then the With
//     arguments, then component=<name> (the hclog name: "raft", then
//     "raft.autopilot" after Named("autopilot")), then the call's own.
//   - hclog argument conventions are kept: alternating keys and values, a
//     lone last value under the key EXTRA_VALUE_AT_END, hclog.Format values
//     formatted with fmt.Sprintf, Hex, Octal, Binary and Quote values
//     formatted as hclog formats them.
//   - SetLevel changes the level of the logger and of every logger derived
//     from it (With, Named, ResetNamed) and of the one it was derived from,
//     as hclog's own loggers do by default.
//   - StandardLogger and StandardWriter write each line as one record, at
//     the level its [TRACE]/[DEBUG]/[INFO]/[WARN]/[ERR]/[ERROR] prefix names
//     when InferLevels is set, else at ForceLevel, else at Info.
package hclogslog

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// NameKey is the attribute that carries the hclog name.
const NameKey = "component"

// Logger is an hclog.Logger that writes to a slog.Handler.
type Logger struct {
	h       slog.Handler // the slog logger's handler, with the With arguments applied
	name    string
	level   *atomic.Int32 // an hclog.Level, shared by every derived logger
	implied []any
}

var _ hclog.Logger = (*Logger)(nil)

// New returns an hclog.Logger named name that writes through l's handler
// and drops records below level. A nil l discards everything.
func New(l *slog.Logger, name string, level hclog.Level) *Logger {
	var h slog.Handler = slog.DiscardHandler
	if l != nil {
		h = l.Handler()
	}
	lv := new(atomic.Int32)
	lv.Store(int32(level))
	return &Logger{h: h, name: name, level: lv}
}

// slogLevel maps an hclog level onto slog's.
func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default: // Info, NoLevel
		return slog.LevelInfo
	}
}

func (l *Logger) enabled(level hclog.Level) bool {
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	floor := hclog.Level(l.level.Load())
	if level == hclog.Off || floor == hclog.Off || level < floor {
		return false
	}
	return l.h.Enabled(context.Background(), slogLevel(level))
}

// log writes one record. Every exported logging method calls it directly,
// so that the caller's frame is at the same depth for the record's source.
func (l *Logger) log(level hclog.Level, msg string, args []any) {
	if !l.enabled(level) {
		return
	}
	var pcs [1]uintptr
	runtime.Callers(3, pcs[:]) // runtime.Callers, log, the exported method
	r := slog.NewRecord(time.Now(), slogLevel(level), msg, pcs[0])
	if l.name != "" {
		r.AddAttrs(slog.String(NameKey, l.name))
	}
	r.AddAttrs(attrs(args)...)
	_ = l.h.Handle(context.Background(), r)
}

// attrs turns hclog's alternating keys and values into slog attributes.
func attrs(args []any) []slog.Attr {
	out := make([]slog.Attr, 0, (len(args)+1)/2)
	for i := 0; i < len(args); i += 2 {
		if i+1 == len(args) {
			out = append(out, slog.Any(hclog.MissingKey, value(args[i])))
			break
		}
		key, ok := args[i].(string)
		if !ok {
			key = fmt.Sprint(args[i])
		}
		out = append(out, slog.Any(key, value(args[i+1])))
	}
	return out
}

// value renders hclog's formatting wrappers as hclog does.
func value(v any) any {
	switch v := v.(type) {
	case hclog.Format:
		if len(v) == 0 {
			return ""
		}
		format, ok := v[0].(string)
		if !ok {
			return fmt.Sprint(v...)
		}
		return fmt.Sprintf(format, v[1:]...)
	case hclog.Hex:
		return "0x" + strconv.FormatUint(uint64(v), 16)
	case hclog.Octal:
		return "0" + strconv.FormatUint(uint64(v), 8)
	case hclog.Binary:
		return "0b" + strconv.FormatUint(uint64(v), 2)
	case hclog.Quote:
		return strconv.Quote(string(v))
	}
	return v
}

// Log writes msg at level.
func (l *Logger) Log(level hclog.Level, msg string, args ...any) { l.log(level, msg, args) }

// Trace writes msg at slog.LevelDebug-4.
func (l *Logger) Trace(msg string, args ...any) { l.log(hclog.Trace, msg, args) }

// Debug writes msg at slog.LevelDebug.
func (l *Logger) Debug(msg string, args ...any) { l.log(hclog.Debug, msg, args) }

// Info writes msg at slog.LevelInfo.
func (l *Logger) Info(msg string, args ...any) { l.log(hclog.Info, msg, args) }

// Warn writes msg at slog.LevelWarn.
func (l *Logger) Warn(msg string, args ...any) { l.log(hclog.Warn, msg, args) }

// Error writes msg at slog.LevelError.
func (l *Logger) Error(msg string, args ...any) { l.log(hclog.Error, msg, args) }

func (l *Logger) IsTrace() bool { return l.enabled(hclog.Trace) }
func (l *Logger) IsDebug() bool { return l.enabled(hclog.Debug) }
func (l *Logger) IsInfo() bool  { return l.enabled(hclog.Info) }
func (l *Logger) IsWarn() bool  { return l.enabled(hclog.Warn) }
func (l *Logger) IsError() bool { return l.enabled(hclog.Error) }

// ImpliedArgs returns the arguments given to With, in order.
func (l *Logger) ImpliedArgs() []any { return append([]any(nil), l.implied...) }

// With returns a logger whose records carry args as well.
func (l *Logger) With(args ...any) hclog.Logger {
	if len(args) == 0 {
		return l
	}
	c := *l
	c.implied = append(append([]any(nil), l.implied...), args...)
	c.h = l.h.WithAttrs(attrs(args))
	return &c
}

// Name returns the logger's name.
func (l *Logger) Name() string { return l.name }

// Named returns a logger whose name is name appended to this one's, after a
// dot.
func (l *Logger) Named(name string) hclog.Logger {
	c := *l
	if l.name != "" {
		c.name = l.name + "." + name
	} else {
		c.name = name
	}
	return &c
}

// ResetNamed returns a logger named name.
func (l *Logger) ResetNamed(name string) hclog.Logger {
	c := *l
	c.name = name
	return &c
}

// SetLevel sets the level of this logger and of every logger it shares its
// origin with.
func (l *Logger) SetLevel(level hclog.Level) { l.level.Store(int32(level)) }

// GetLevel returns the level.
func (l *Logger) GetLevel() hclog.Level { return hclog.Level(l.level.Load()) }

// StandardLogger returns a *log.Logger that writes through this logger.
func (l *Logger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(l.StandardWriter(opts), "", 0)
}

// StandardWriter returns a writer that makes a record of each line written.
func (l *Logger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return &stdWriter{l: l, infer: opts.InferLevels, force: opts.ForceLevel}
}

type stdWriter struct {
	l     *Logger
	infer bool
	force hclog.Level
}

// levelPrefixes are the prefixes InferLevels recognises, longest first.
var levelPrefixes = []struct {
	prefix string
	level  hclog.Level
}{
	{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info},
	{"[WARN]", hclog.Warn}, {"[ERROR]", hclog.Error}, {"[ERR]", hclog.Error},
}

func (w *stdWriter) Write(p []byte) (int, error) {
	for line := range strings.SplitSeq(string(bytes.TrimRight(p, "\n")), "\n") {
		level := hclog.Info
		if w.force != hclog.NoLevel {
			level = w.force
		}
		line = strings.TrimSpace(line)
		if w.infer {
			for _, lp := range levelPrefixes {
				if rest, ok := strings.CutPrefix(line, lp.prefix); ok {
					level, line = lp.level, strings.TrimSpace(rest)
					break
				}
			}
		}
		w.l.write(level, line)
	}
	return len(p), nil
}

// write is log for the standard writer, whose caller is the log package.
func (l *Logger) write(level hclog.Level, msg string) { l.log(level, msg, nil) }
