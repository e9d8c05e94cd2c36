// Package director is Bunker's control plane: it holds the deployment's
// nodes and plans (director.yaml), schedules the plans and orchestrates each
// run across the plan's agents, which connect out to it over mutual TLS.
//
// This package holds the configuration and its checks so far; the
// orchestration builds on them.
package director
