// Package agent runs on every node: it connects out to the director over
// mutual TLS and runs only the plans of its own configuration (agent.yaml);
// the director can ask for a plan by name, never send a command, a path or
// a hook.
//
// This package holds the configuration and its checks so far; the agent's
// channel and providers build on them.
package agent
