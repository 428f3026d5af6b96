//! Access traces for measuring unusual-browsing detection: weeks of
//! case-driven look-ups by requesters under several agreements, with misuse
//! of each kind injected at known places (docs/browsing.md, the bench
//! `custos-broker/benches/browsing.rs`).
//!
//! Benign work, per requester and working day: a Poisson number of
//! look-ups in working hours (America/New_York), each for a subject of one
//! of the requester's open cases (a new case now and then, one to four
//! subjects each; returning to a case's subject is ordinary), justified
//! with the case's reference. Realistic noise that rules can mistake for
//! misuse: overtime, a subject shared with another agreement's case (a
//! joint investigation), a request first filed under the wrong agreement
//! (denied), and a justification that forgets its reference.
//!
//! Requesters are synthetic employees: their own record is one filer of
//! the population, they live on some filer's street, share a family name
//! and ZIP area with a relative, live with household members, and their
//! colleagues are the other requesters of their agreement.

use fake::rand::rngs::Xoshiro256PlusPlus;
use fake::rand::{RngExt, SeedableRng};

/// One filer of the population, as the trace needs it.
#[derive(Debug, Clone)]
pub struct Filer {
    /// Subject id (TIN).
    pub id: String,
    /// `Given Family`.
    pub name: String,
    /// `number street, city`.
    pub address: String,
    /// Five-digit ZIP code.
    pub zip: String,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct TraceParams {
    /// Seed: the same parameters and seed give the same trace.
    pub seed: u64,
    /// Weeks of work (five working days each).
    pub weeks: u32,
    /// Agreements (each one requesting agency).
    pub agreements: u32,
    /// Requesters per agreement.
    pub requesters_per_agreement: u32,
    /// Mean look-ups per requester and working day.
    pub lookups_per_day: f64,
    /// Injected misuse events per kind.
    pub misuse_per_kind: u32,
    /// Share of benign look-ups made in overtime (19:00-22:00).
    pub overtime: f64,
    /// Share of benign look-ups of a subject another agreement's case holds.
    pub shared_subjects: f64,
    /// Share of benign look-ups first filed under the wrong agreement.
    pub wrong_agreement: f64,
    /// Share of benign justifications that forget the case reference.
    pub forgotten_reference: f64,
}

impl TraceParams {
    /// Four weeks, 3 agreements × 12 requesters, 6 look-ups a day, 8
    /// misuse events per kind, a little of every kind of noise.
    pub fn standard(seed: u64) -> Self {
        Self {
            seed,
            weeks: 4,
            agreements: 3,
            requesters_per_agreement: 12,
            lookups_per_day: 6.0,
            misuse_per_kind: 8,
            overtime: 0.002,
            shared_subjects: 0.002,
            wrong_agreement: 0.01,
            forgotten_reference: 0.001,
        }
    }
}

/// A kind of misuse, and the rule meant to catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Misuse {
    /// Looking up oneself.
    SelfAccess,
    /// A household member.
    Household,
    /// A colleague.
    Colleague,
    /// A neighbour (same street).
    Neighbour,
    /// A relative (same family name, same ZIP area).
    Relative,
    /// Someone in one's own ZIP code.
    SameZip,
    /// A protected, high-profile person.
    Protected,
    /// A person in the news, another agency's subject.
    RepeatSubject,
    /// Browsing at night.
    OffHours,
    /// A burst of refused requests.
    Fishing,
    /// A look-up with no case behind it.
    NoCase,
    /// A day of five times the usual volume.
    Volume,
}

impl Misuse {
    /// Every kind.
    pub const ALL: [Misuse; 12] = [
        Self::SelfAccess,
        Self::Household,
        Self::Colleague,
        Self::Neighbour,
        Self::Relative,
        Self::SameZip,
        Self::Protected,
        Self::RepeatSubject,
        Self::OffHours,
        Self::Fishing,
        Self::NoCase,
        Self::Volume,
    ];

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::SelfAccess => "self access",
            Self::Household => "household",
            Self::Colleague => "colleague",
            Self::Neighbour => "neighbour",
            Self::Relative => "relative (surname)",
            Self::SameZip => "same ZIP",
            Self::Protected => "protected subject",
            Self::RepeatSubject => "another agency's subject",
            Self::OffHours => "off hours",
            Self::Fishing => "fishing (refusals)",
            Self::NoCase => "no case reference",
            Self::Volume => "volume (peers)",
        }
    }

    /// The rule meant to catch it (docs/browsing.md).
    pub fn rule(self) -> &'static str {
        match self {
            Self::SelfAccess => "self_access",
            Self::Household => "household",
            Self::Colleague => "colleague",
            Self::Neighbour => "same_street",
            Self::Relative => "same_surname",
            Self::SameZip => "same_zip",
            Self::Protected => "protected_subject",
            Self::RepeatSubject => "repeat_subject",
            Self::OffHours => "off_hours",
            Self::Fishing => "fishing",
            Self::NoCase => "no_case_link",
            Self::Volume => "peer_deviation",
        }
    }
}

/// A requester and their own facts.
#[derive(Debug, Clone)]
pub struct Requester {
    /// Principal name.
    pub name: String,
    /// Index of their agreement.
    pub agreement: usize,
    /// Their own subject id.
    pub own_id: String,
    /// Family name.
    pub surname: String,
    /// Street address.
    pub address: String,
    /// ZIP code.
    pub zip: String,
    /// Household members' ids.
    pub household: Vec<String>,
    /// Colleagues' ids.
    pub colleagues: Vec<String>,
}

/// What an event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Request, approval by an approver, fetch.
    Lookup,
    /// A request under an agreement the requester is not party to (denied).
    WrongAgreement,
}

/// One planned access.
#[derive(Debug, Clone)]
pub struct Event {
    /// When (microseconds since the Unix epoch).
    pub at_micros: i64,
    /// Index into [`Trace::requesters`].
    pub requester: usize,
    /// The agreement it is made under.
    pub agreement: usize,
    /// What it does.
    pub action: Action,
    /// The subject's id.
    pub subject: String,
    /// The justification.
    pub justification: String,
    /// The misuse it is part of, if any.
    pub misuse: Option<Misuse>,
}

/// A generated trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Agreement ids.
    pub agreements: Vec<String>,
    /// Requesters.
    pub requesters: Vec<Requester>,
    /// Subjects the custodian protects.
    pub protected: Vec<String>,
    /// Events in time order.
    pub events: Vec<Event>,
    /// Volume misuse: (requester, day since the epoch).
    pub volume_days: Vec<(usize, i64)>,
    /// The first day (since the epoch) of the trace.
    pub first_day: i64,
}

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
/// New York is UTC−5 in winter (the trace stays clear of the DST change).
const NEW_YORK: i64 = -5 * HOUR;

/// Generates a trace over `population` (at least a few hundred filers)
/// starting on the Monday `start_day` (days since the epoch).
pub fn generate(params: &TraceParams, population: &[Filer], start_day: i64) -> Trace {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed ^ 0x7ACE);
    let n = population.len();
    let pick = |rng: &mut Xoshiro256PlusPlus| rng.random_range(0..n);
    let agreements: Vec<String> = (0..params.agreements)
        .map(|a| format!("agency-{a}"))
        .collect();
    // People reserved for the requesters' lives and for protection.
    let mut reserved = std::collections::HashSet::new();
    let mut take = |rng: &mut Xoshiro256PlusPlus| loop {
        let i = pick(rng);
        if reserved.insert(i) {
            return i;
        }
    };
    let protected: Vec<String> = (0..20)
        .map(|_| population[take(&mut rng)].id.clone())
        .collect();
    let mut requesters = Vec::new();
    for a in 0..params.agreements as usize {
        for r in 0..params.requesters_per_agreement {
            let own = population[take(&mut rng)].id.clone();
            let neighbour = population[take(&mut rng)].address.clone();
            let zip_mate = population[take(&mut rng)].zip.clone();
            // A relative: same family name, same ZIP area, another ZIP.
            let area = &zip_mate[..3];
            let relatives: Vec<&Filer> = population
                .iter()
                .filter(|f| &f.zip[..3] == area && f.zip != zip_mate)
                .collect();
            let relative = if relatives.is_empty() {
                &population[pick(&mut rng)]
            } else {
                relatives[rng.random_range(0..relatives.len())]
            };
            let household: Vec<String> = (0..rng.random_range(1..=3))
                .map(|_| population[take(&mut rng)].id.clone())
                .collect();
            let street = neighbour
                .split_once(' ')
                .map_or(neighbour.as_str(), |(_, s)| s);
            requesters.push(Requester {
                name: format!("req-{a}-{r}"),
                agreement: a,
                own_id: own,
                surname: relative
                    .name
                    .rsplit(' ')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                address: format!("{} {street}", 20_000 + r),
                zip: zip_mate,
                household,
                colleagues: Vec::new(),
            });
        }
    }
    // Colleagues: the other requesters of the agreement.
    for i in 0..requesters.len() {
        let a = requesters[i].agreement;
        let mine: Vec<String> = requesters
            .iter()
            .enumerate()
            .filter(|(j, r)| *j != i && r.agreement == a)
            .map(|(_, r)| r.own_id.clone())
            .collect();
        requesters[i].colleagues = mine;
    }
    let is_reserved = |id: &str| {
        requesters.iter().any(|r| {
            r.own_id == id
                || r.household.iter().any(|h| h == id)
                || r.colleagues.iter().any(|c| c == id)
        }) || protected.iter().any(|p| p == id)
    };

    let mut events = Vec::new();
    // Open cases per requester: (reference, subjects).
    let mut cases: Vec<Vec<(String, Vec<String>)>> = vec![Vec::new(); requesters.len()];
    let mut recent_by_agreement: Vec<Vec<String>> = vec![Vec::new(); agreements.len()];
    let days: Vec<i64> = (0..params.weeks as i64 * 7)
        .map(|d| start_day + d)
        .filter(|d| (d + 3).rem_euclid(7) < 5) // 1970-01-01 was a Thursday
        .collect();
    let working_time = |rng: &mut Xoshiro256PlusPlus, day: i64| {
        day * DAY - NEW_YORK + 7 * HOUR + 30 * 60_000_000 + rng.random_range(0..11 * HOUR)
    };
    // Benign subjects are anyone but the requesters' own circles and the
    // protected: a coincidence (a namesake, a neighbour) is left in, since
    // it is what makes a rule raise a false alert. Two requesters' cases
    // share a person only at the `shared_subjects` rate: in a population
    // of 150 million they would about never share one by chance, while
    // the trace's few thousand people would make them share hundreds.
    let mut owner: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut fresh_subject = |rng: &mut Xoshiro256PlusPlus, ri: usize| loop {
        let f = &population[rng.random_range(0..n)];
        if !is_reserved(&f.id) && owner.get(&f.id).is_none_or(|o| *o == ri) {
            owner.insert(f.id.clone(), ri);
            return f.id.clone();
        }
    };
    let new_case =
        |rng: &mut Xoshiro256PlusPlus| format!("CASE-{:06}", rng.random_range(0..1_000_000u32));
    let justify = |case: &str, rng: &mut Xoshiro256PlusPlus| {
        const WHY: [&str; 4] = [
            "refund deposited to an account shared by many filers",
            "wages reported by an employer that does not exist",
            "identity theft reported by the filer",
            "payment sent after the recorded date of death",
        ];
        format!("{case}: {}", WHY[rng.random_range(0..WHY.len())])
    };
    let mut volume_plan = std::collections::HashMap::new();
    let mut volume_days = Vec::new();
    for _ in 0..params.misuse_per_kind {
        let r = rng.random_range(0..requesters.len());
        let d = days[rng.random_range(days.len() / 4..days.len())];
        if volume_plan.insert((r, d), ()).is_none() {
            volume_days.push((r, d));
        }
    }
    for &day in &days {
        for (ri, r) in requesters.iter().enumerate() {
            let mut count = poisson(&mut rng, params.lookups_per_day);
            if volume_plan.contains_key(&(ri, day)) {
                count += (params.lookups_per_day * 5.0).round() as u32;
            }
            for _ in 0..count {
                let mut at = working_time(&mut rng, day);
                if rng.random::<f64>() < params.overtime {
                    at = day * DAY - NEW_YORK + 19 * HOUR + rng.random_range(0..3 * HOUR);
                }
                let open = &mut cases[ri];
                if open.is_empty() || rng.random::<f64>() < 0.3 {
                    let subjects: Vec<String> = (0..rng.random_range(1..=4))
                        .map(|_| {
                            let shared = &recent_by_agreement
                                .iter()
                                .enumerate()
                                .filter(|(a, _)| *a != r.agreement)
                                .flat_map(|(_, s)| s.iter())
                                .cloned()
                                .collect::<Vec<_>>();
                            if !shared.is_empty() && rng.random::<f64>() < params.shared_subjects {
                                shared[rng.random_range(0..shared.len())].clone()
                            } else {
                                fresh_subject(&mut rng, ri)
                            }
                        })
                        .collect();
                    open.push((new_case(&mut rng), subjects));
                    if open.len() > 6 {
                        open.remove(0);
                    }
                }
                let (case, subjects) = &open[rng.random_range(0..open.len())];
                let subject = subjects[rng.random_range(0..subjects.len())].clone();
                let mut justification = justify(case, &mut rng);
                if rng.random::<f64>() < params.forgotten_reference {
                    justification = justification
                        .split_once(": ")
                        .map_or(justification.clone(), |(_, w)| format!("Follow-up: {w}"));
                }
                if rng.random::<f64>() < params.wrong_agreement && agreements.len() > 1 {
                    events.push(Event {
                        at_micros: at - 60_000_000,
                        requester: ri,
                        agreement: (r.agreement + 1) % agreements.len(),
                        action: Action::WrongAgreement,
                        subject: subject.clone(),
                        justification: justification.clone(),
                        misuse: None,
                    });
                }
                let recent = &mut recent_by_agreement[r.agreement];
                recent.push(subject.clone());
                if recent.len() > 200 {
                    recent.remove(0);
                }
                events.push(Event {
                    at_micros: at,
                    requester: ri,
                    agreement: r.agreement,
                    action: Action::Lookup,
                    subject,
                    justification,
                    misuse: volume_plan
                        .contains_key(&(ri, day))
                        .then_some(Misuse::Volume),
                });
            }
        }
    }
    // Injected misuse, after the first week (so that peers have history).
    for kind in Misuse::ALL {
        if kind == Misuse::Volume {
            continue;
        }
        for _ in 0..params.misuse_per_kind {
            let ri = rng.random_range(0..requesters.len());
            let r = &requesters[ri];
            let day = days[rng.random_range(days.len() / 4..days.len())];
            let at = working_time(&mut rng, day);
            let case = new_case(&mut rng);
            let justification = justify(&case, &mut rng);
            let lookup = |subject: String, at: i64, justification: String| Event {
                at_micros: at,
                requester: ri,
                agreement: r.agreement,
                action: Action::Lookup,
                subject,
                justification,
                misuse: Some(kind),
            };
            let subject_with = |rng: &mut Xoshiro256PlusPlus, want: &dyn Fn(&Filer) -> bool| {
                population
                    .iter()
                    .filter(|f| want(f))
                    .nth(rng.random_range(0..4))
                    .or_else(|| population.iter().find(|f| want(f)))
                    .map(|f| f.id.clone())
            };
            match kind {
                Misuse::SelfAccess => events.push(lookup(r.own_id.clone(), at, justification)),
                Misuse::Household => {
                    let h = r.household[rng.random_range(0..r.household.len())].clone();
                    events.push(lookup(h, at, justification));
                }
                Misuse::Colleague => {
                    let c = r.colleagues[rng.random_range(0..r.colleagues.len())].clone();
                    events.push(lookup(c, at, justification));
                }
                Misuse::Neighbour => {
                    let street = r.address.split_once(' ').map(|(_, s)| s.to_owned());
                    if let Some(id) = subject_with(&mut rng, &|f| {
                        f.address.split_once(' ').map(|(_, s)| s.to_owned()) == street
                    }) {
                        events.push(lookup(id, at, justification));
                    }
                }
                Misuse::Relative => {
                    if let Some(id) = subject_with(&mut rng, &|f| {
                        f.name.rsplit(' ').next() == Some(r.surname.as_str())
                            && f.zip[..3] == r.zip[..3]
                            && f.zip != r.zip
                    }) {
                        events.push(lookup(id, at, justification));
                    }
                }
                Misuse::SameZip => {
                    let zip = r.zip.clone();
                    if let Some(id) = subject_with(&mut rng, &|p| p.zip == zip) {
                        events.push(lookup(id, at, justification));
                    }
                }
                Misuse::Protected => {
                    let p = protected[rng.random_range(0..protected.len())].clone();
                    events.push(lookup(p, at, justification));
                }
                Misuse::RepeatSubject => {
                    // A subject another agency looked up in the trace's
                    // first week (in the news), looked up later.
                    let other = events
                        .iter()
                        .filter(|e| {
                            e.action == Action::Lookup
                                && e.misuse.is_none()
                                && requesters[e.requester].agreement != r.agreement
                                && e.at_micros < at
                                && e.at_micros > at - 20 * DAY
                        })
                        .map(|e| e.subject.clone())
                        .collect::<Vec<_>>();
                    if !other.is_empty() {
                        let s = other[rng.random_range(0..other.len())].clone();
                        events.push(lookup(s, at, justification));
                    }
                }
                Misuse::OffHours => {
                    let night = day * DAY - NEW_YORK + 23 * HOUR + rng.random_range(0..5 * HOUR);
                    events.push(lookup(fresh_subject(&mut rng, ri), night, justification));
                }
                Misuse::NoCase => {
                    events.push(lookup(
                        fresh_subject(&mut rng, ri),
                        at,
                        "Checking on this person's refund".to_owned(),
                    ));
                }
                Misuse::Fishing => {
                    for k in 0..6 {
                        events.push(Event {
                            at_micros: at + k * 3 * 60_000_000,
                            requester: ri,
                            agreement: (r.agreement + 1) % agreements.len(),
                            action: Action::WrongAgreement,
                            subject: fresh_subject(&mut rng, ri),
                            justification: justification.clone(),
                            misuse: Some(kind),
                        });
                    }
                }
                Misuse::Volume => {}
            }
        }
    }
    events.sort_by_key(|e| e.at_micros);
    // Equal times would leave order to chance: one microsecond apart.
    for i in 1..events.len() {
        if events[i].at_micros <= events[i - 1].at_micros {
            events[i].at_micros = events[i - 1].at_micros + 1;
        }
    }
    Trace {
        agreements,
        requesters,
        protected,
        events,
        volume_days,
        first_day: start_day,
    }
}

/// A Poisson draw (Knuth's method; means here are small).
fn poisson(rng: &mut Xoshiro256PlusPlus, mean: f64) -> u32 {
    let limit = (-mean).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}
