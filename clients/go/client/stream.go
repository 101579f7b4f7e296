package client

import (
	"context"
	"io"

	"google.golang.org/grpc/codes"

	pb "chatradio/clients/go/chatradiov1"
)

// Stream is a streamed impression, read like a bufio.Scanner:
//
//	st := c.StreamImpression(ctx, findings, opts)
//	defer st.Close()
//	for st.Next() {
//		fmt.Print(st.Delta())
//	}
//	if err := st.Err(); err != nil { ... }
//	summary := st.Final() // .Impression is the whole text
//
// A failed attempt is retried (RetryPolicy) only while no text has arrived,
// so a caller never sees text twice.
type Stream struct {
	c       *Client
	req     *pb.GenerateImpressionRequest
	ctx     context.Context
	cancel  context.CancelFunc
	call    pb.ImpressionService_StreamImpressionClient // the current attempt; nil between attempts
	attempt int                                         // 0-based
	gotText bool
	delta   string
	final   *pb.GenerateImpressionResponse
	err     error
	done    bool
}

// StreamImpression starts generating the impression for `findings`; the
// first call of Next sends the request. Close (or cancelling ctx) before the
// end cancels the request on the server.
func (c *Client) StreamImpression(ctx context.Context, findings string, o GenerateOptions) *Stream {
	ctx, cancel := c.callContext(ctx)
	s := &Stream{c: c, ctx: ctx, cancel: cancel}
	s.req, s.err = generateRequest(findings, o)
	if s.err != nil {
		s.finish(s.err)
	}
	return s
}

// Next waits for the next text delta; false at the end of the stream or on
// an error (see Err and Final).
func (s *Stream) Next() bool {
	for !s.done {
		if s.call == nil {
			call, err := s.c.rpc.StreamImpression(s.ctx, s.req)
			if err != nil {
				s.retryAfter(err)
				continue
			}
			s.call = call
		}
		msg, err := s.call.Recv()
		switch {
		case err == io.EOF:
			s.finish(&Error{Code: codes.Internal, Message: "the stream ended without its final message", Attempts: s.attempt + 1})
		case err != nil:
			s.call = nil
			if s.gotText {
				s.finish(callError(err, s.attempt+1))
			} else {
				s.retryAfter(err)
			}
		case msg.GetFinal() != nil:
			s.final = msg.GetFinal()
			s.finish(nil)
		default:
			s.gotText = true
			s.delta = msg.GetDelta()
			return true
		}
	}
	return false
}

// retryAfter pauses before the next attempt, or ends the stream with the
// error when the attempt that failed with `err` must not be retried.
func (s *Stream) retryAfter(err error) {
	if perr := s.c.retry.pause(s.ctx, err, s.attempt); perr != nil {
		s.finish(perr)
		return
	}
	s.attempt++
}

func (s *Stream) finish(err error) {
	s.err, s.done = err, true
	s.cancel()
}

// Delta is the text that the last successful Next received: whole UTF-8
// characters.
func (s *Stream) Delta() string { return s.delta }

// Err is nil when the stream ended with its summary; otherwise the error
// (an *Error for a failed call).
func (s *Stream) Err() error { return s.err }

// Final is the summary that ended a successful stream (the same as
// Impression's response; nil before the end or after an error).
func (s *Stream) Final() *pb.GenerateImpressionResponse { return s.final }

// Close ends the stream, cancelling the request on the server when it has not
// finished. Safe to call more than once.
func (s *Stream) Close() {
	s.cancel()
	s.done = true
}
