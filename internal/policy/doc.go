// Package policy decides which snapshots forget keeps. It is pure logic: it
// reads snapshot metadata and returns decisions, and does no I/O.
//
// # Rules
//
// A Policy is a set of keep rules. Apply runs them over one group of
// snapshots, visiting the snapshots from newest to oldest (equal times are
// ordered by ID, ascending). A snapshot is kept when at least one rule keeps
// it, and its Decision lists every rule that did, so the output can explain
// itself. A rule with a count of zero (or a zero Within, or no Tags) is not
// used.
//
//   - Last keeps the N newest snapshots.
//
//   - Hourly, Daily, Weekly, Monthly and Yearly are bucket rules. Each maps a
//     snapshot's time to a calendar bucket and keeps, for the N most recent
//     buckets that hold snapshots, the newest snapshot of the bucket. Put
//     another way: walking newest first, a rule keeps a snapshot when it has
//     kept fewer than N so far and the snapshot's bucket is not the bucket of
//     the snapshot it kept last. Buckets with no snapshot are skipped, not
//     counted, so "7 daily" keeps 7 snapshots even if backups missed some
//     days. The rules count independently: one snapshot can use up a slot of
//     several of them.
//
//   - Within keeps every snapshot taken at or after a cutoff computed from the
//     NEWEST snapshot of the group, not from the current time, so that a host
//     which stopped backing up keeps its last history instead of losing it
//     all once the period has passed. See "Calendar arithmetic" below.
//
//   - Tags keeps every snapshot that carries all the tags of at least one of
//     the TagSets.
//
// Apply also takes a minimum retention: any snapshot younger than it at the
// given "now" is kept whatever the policy says. It is a safety net, not a
// rule: if the policy itself keeps no snapshot of a non-empty group, Apply
// refuses with ErrKeepsNothing even when the minimum retention would keep some
// young ones for now, because such a policy would empty the group as soon as
// they age.
//
// # Buckets and time zones
//
// Buckets are computed in the time zone that the caller passes (normally
// time.Local), never in the zone stored with the snapshot:
//
//   - hourly: local date, hour and UTC offset. The offset makes the hour that
//     repeats when daylight saving time ends two buckets, one per real hour;
//     the hour skipped when it starts is simply a bucket with no snapshot.
//   - daily: local calendar date, so a 23- or 25-hour day is still one day.
//   - weekly: ISO 8601 week, with the year that time.Time.ISOWeek reports.
//     Weeks start on Monday and belong to the year that holds their Thursday:
//     2020-12-31 and 2021-01-03 are both in 2020-W53, 2021-01-04 starts
//     2021-W01, and 2024-12-30 is already in 2025-W01.
//   - monthly: local year and month; yearly: local year. These follow the
//     calendar, not ISO weeks: 2024-12-30 counts for year 2024.
//
// # Calendar arithmetic
//
// A Duration counts years, months, days and hours. The Within cutoff is the
// newest snapshot's time in the caller's zone, moved back by the years,
// months and days with time.Time.AddDate (wall-clock arithmetic, so "1d"
// across a daylight saving change is 23 or 25 real hours) and then by the
// hours as real elapsed time. AddDate normalises impossible dates by rolling
// forward: one year before 2024-02-29 is "2023-02-29", which is 2023-03-01,
// and one month before 2024-03-31 is "2024-02-31", which is 2024-03-02. A
// snapshot exactly at the cutoff is kept.
//
// # Grouping and filtering
//
// GroupSnapshots splits snapshots by host, paths and/or tags, treating paths
// and tags as sets, and Filter selects snapshots by host, tags and paths, as
// the --host, --tag and --path options do. Apply works on one group at a time.
package policy
