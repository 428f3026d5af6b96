//! The synthetic population: people, their tax returns, benefits and deaths.
//!
//! Every value is a pure function of `(seed, person index[, tax year])`, so
//! datasets generated separately agree on who is who.

use fake::Fake;
use fake::faker::address::en::{BuildingNumber, CityName, StreetName};
use fake::faker::name::en::{FirstName, LastName};
use fake::rand::rngs::Xoshiro256PlusPlus;
use fake::rand::{RngExt, SeedableRng};

/// Size of each block of never-issued SSNs (area 000, area 666).
const BLOCK: u64 = 1_000_000;
/// Areas 001–899 except 666, each with group 00 (never issued).
const GROUP_ZERO_AREAS: u64 = 898;

/// How many distinct never-issued SSNs [`ssn_for`] can produce.
pub fn subject_space() -> u64 {
    2 * BLOCK + GROUP_ZERO_AREAS * 10_000
}

/// The `index`-th never-issued SSN, as `AAA-GG-SSSS`. A bijection from
/// `0..subject_space()`:
/// - `000-GG-SSSS` and `666-GG-SSSS` (area never issued), then
/// - `AAA-00-SSSS` for the other areas 001–899 (group 00 never issued).
pub fn ssn_for(index: u64) -> String {
    let index = index % subject_space();
    if index < 2 * BLOCK {
        let area = if index < BLOCK { 0 } else { 666 };
        let rest = index % BLOCK;
        format!("{area:03}-{:02}-{:04}", rest / 10_000, rest % 10_000)
    } else {
        let rest = index - 2 * BLOCK;
        let mut area = rest / 10_000 + 1;
        if area >= 666 {
            area += 1;
        }
        format!("{area:03}-00-{:04}", rest % 10_000)
    }
}

/// A state with its share of the population and its ZIP-code prefixes.
#[derive(Debug, Clone, Copy)]
pub struct State {
    /// Postal abbreviation.
    pub abbr: &'static str,
    weight: u32,
    zip_lo: u32,
    zip_hi: u32,
}

const fn st(abbr: &'static str, weight: u32, zip_lo: u32, zip_hi: u32) -> State {
    State {
        abbr,
        weight,
        zip_lo,
        zip_hi,
    }
}

/// States (and DC), weighted roughly by population (in 100k people), with
/// their three-digit ZIP prefix ranges.
pub const STATES: [State; 51] = [
    st("AL", 50, 350, 369),
    st("AK", 7, 995, 999),
    st("AZ", 73, 850, 865),
    st("AR", 30, 716, 729),
    st("CA", 390, 900, 961),
    st("CO", 58, 800, 816),
    st("CT", 36, 60, 69),
    st("DE", 10, 197, 199),
    st("DC", 7, 200, 205),
    st("FL", 222, 320, 349),
    st("GA", 109, 300, 319),
    st("HI", 14, 967, 968),
    st("ID", 19, 832, 838),
    st("IL", 126, 600, 629),
    st("IN", 68, 460, 479),
    st("IA", 32, 500, 528),
    st("KS", 29, 660, 679),
    st("KY", 45, 400, 427),
    st("LA", 46, 700, 714),
    st("ME", 14, 39, 49),
    st("MD", 62, 206, 219),
    st("MA", 70, 10, 27),
    st("MI", 100, 480, 499),
    st("MN", 57, 550, 567),
    st("MS", 29, 386, 397),
    st("MO", 62, 630, 658),
    st("MT", 11, 590, 599),
    st("NE", 20, 680, 693),
    st("NV", 32, 889, 898),
    st("NH", 14, 30, 38),
    st("NJ", 93, 70, 89),
    st("NM", 21, 870, 884),
    st("NY", 197, 100, 149),
    st("NC", 107, 270, 289),
    st("ND", 8, 580, 588),
    st("OH", 118, 430, 458),
    st("OK", 40, 730, 749),
    st("OR", 42, 970, 979),
    st("PA", 130, 150, 196),
    st("RI", 11, 28, 29),
    st("SC", 53, 290, 299),
    st("SD", 9, 570, 577),
    st("TN", 70, 370, 385),
    st("TX", 300, 750, 799),
    st("UT", 34, 840, 847),
    st("VT", 6, 50, 59),
    st("VA", 87, 220, 246),
    st("WA", 78, 980, 994),
    st("WV", 18, 247, 268),
    st("WI", 59, 530, 549),
    st("WY", 6, 820, 831),
];

/// Filing statuses, as the schema's enum values.
pub const FILING_STATUSES: [&str; 5] = [
    "single",
    "married_joint",
    "married_separate",
    "head_of_household",
    "qualifying_surviving_spouse",
];

/// One synthetic person.
#[derive(Debug, Clone)]
pub struct Person {
    /// Index in the population.
    pub index: u64,
    /// Never-issued SSN, `AAA-GG-SSSS`.
    pub ssn: String,
    /// Given name.
    pub first_name: &'static str,
    /// Family name.
    pub last_name: &'static str,
    /// `YYYY-MM-DD`.
    pub birth_date: String,
    /// Year of birth.
    pub birth_year: i64,
    /// Street address and city.
    pub address: String,
    /// Five-digit ZIP code.
    pub zip: String,
    /// State of residence.
    pub state: State,
    /// The person's own bank account number.
    pub bank_account: String,
}

impl Person {
    /// `First Last`.
    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

pub(crate) struct Benefit {
    pub monthly: String,
    pub account: String,
}

pub(crate) struct Fate {
    pub benefit: Option<Benefit>,
    pub death_date: Option<String>,
}

pub(crate) struct TaxReturn {
    ssn: String,
    name: String,
    address: String,
    zip: String,
    birth_date: String,
    filing_status: &'static str,
    wages: String,
    agi: String,
    tax: String,
    refund: String,
    bank_account: String,
    state: &'static str,
    tax_year: String,
}

impl TaxReturn {
    pub fn fields(&self) -> [&str; 13] {
        [
            &self.ssn,
            &self.name,
            &self.address,
            &self.zip,
            &self.birth_date,
            self.filing_status,
            &self.wages,
            &self.agi,
            &self.tax,
            &self.refund,
            &self.bank_account,
            self.state,
            &self.tax_year,
        ]
    }
}

pub(crate) struct World {
    seed: u64,
    /// Multiplier of the index permutation (coprime with the SSN space).
    stride: u64,
    offset: u64,
    /// Accounts shared by many filers: the fraud pattern to find.
    shared_accounts: Vec<String>,
    total_weight: u32,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// SplitMix64: a fast, well-mixed 64-bit hash for deriving seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn cents(amount: f64) -> String {
    // Amounts are non-negative and far below 2^53 cents, so the cast is exact enough.
    let c = (amount.max(0.0) * 100.0).round() as i64;
    format!("{}.{:02}", c / 100, c % 100)
}

fn digits<R: RngExt>(rng: &mut R, n: usize) -> String {
    let mut s = String::with_capacity(n);
    s.push(char::from(b'1' + rng.random_range(0..9u8)));
    for _ in 1..n {
        s.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    s
}

fn normal<R: RngExt>(rng: &mut R) -> f64 {
    // Box–Muller; u1 in (0, 1] keeps ln finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn date(year: i64, rng: &mut Xoshiro256PlusPlus) -> String {
    let month = rng.random_range(1..=12u32);
    let day = rng.random_range(1..=28u32);
    format!("{year:04}-{month:02}-{day:02}")
}

impl World {
    pub fn new(seed: u64, population: u64) -> Self {
        let space = subject_space();
        let mut stride = (mix(seed) % space) | 1;
        while gcd(stride, space) != 1 {
            stride += 2;
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed ^ 0xACC0));
        let shared = (population / 2000).max(3);
        Self {
            seed,
            stride,
            offset: mix(seed ^ 0x0FF5) % space,
            shared_accounts: (0..shared).map(|_| digits(&mut rng, 12)).collect(),
            total_weight: STATES.iter().map(|s| s.weight).sum(),
        }
    }

    fn rng(&self, index: u64, salt: u64) -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(mix(mix(self.seed ^ salt) ^ index))
    }

    fn state<R: RngExt>(&self, rng: &mut R) -> State {
        let mut pick = rng.random_range(0..self.total_weight);
        for s in STATES {
            if pick < s.weight {
                return s;
            }
            pick -= s.weight;
        }
        STATES[0]
    }

    pub fn person(&self, index: u64) -> Person {
        let mut rng = self.rng(index, 1);
        let permuted = (u128::from(index) * u128::from(self.stride) + u128::from(self.offset))
            % u128::from(subject_space());
        let birth_year = 1935 + i64::from(rng.random_range(0..70u32));
        let state = self.state(&mut rng);
        let zip3 = rng.random_range(state.zip_lo..=state.zip_hi);
        let street: String = StreetName().fake_with_rng(&mut rng);
        let number: String = BuildingNumber().fake_with_rng(&mut rng);
        let city: String = CityName().fake_with_rng(&mut rng);
        let account_len = 10 + rng.random_range(0..3usize);
        Person {
            index,
            ssn: ssn_for(u64::try_from(permuted).unwrap_or(0)),
            first_name: FirstName().fake_with_rng(&mut rng),
            last_name: LastName().fake_with_rng(&mut rng),
            birth_date: date(birth_year, &mut rng),
            birth_year,
            address: format!("{number} {street}, {city}"),
            zip: format!("{zip3:03}{:02}", rng.random_range(0..100u32)),
            state,
            bank_account: digits(&mut rng, account_len),
        }
    }

    pub fn tax_return(&self, p: &Person, year: i64) -> TaxReturn {
        let mut rng = self.rng(p.index, 0x7A0 + u64::try_from(year).unwrap_or(0));
        let age = year - p.birth_year;
        let status = if age < 26 {
            0
        } else {
            [0, 0, 1, 1, 1, 2, 3, 3, 4][rng.random_range(0..9usize)]
        };
        let working = age < 67 && rng.random::<f64>() > 0.12;
        let wages = if working {
            (10.6 + 0.9 * normal(&mut rng)).exp().min(9_000_000.0)
        } else {
            0.0
        };
        let other = if age >= 62 || rng.random::<f64>() < 0.3 {
            (8.5 + 1.6 * normal(&mut rng)).exp().min(5_000_000.0)
        } else {
            0.0
        };
        let agi = wages + other;
        let deduction = [14_600.0, 29_200.0, 14_600.0, 21_900.0, 29_200.0][status];
        let tax = tax_on((agi - deduction).max(0.0));
        let withheld = tax * (0.8 + 0.5 * rng.random::<f64>()) + if working { 300.0 } else { 0.0 };
        let refund = (withheld - tax).clamp(0.0, 900_000.0);
        let direct_deposit = rng.random::<f64>() < 0.85;
        let bank_account = if !direct_deposit || refund == 0.0 {
            String::new()
        } else if rng.random::<f64>() < 0.004 {
            let i = rng.random_range(0..self.shared_accounts.len());
            self.shared_accounts[i].clone()
        } else {
            p.bank_account.clone()
        };
        TaxReturn {
            ssn: p.ssn.clone(),
            name: p.full_name(),
            address: p.address.clone(),
            zip: p.zip.clone(),
            birth_date: p.birth_date.clone(),
            filing_status: FILING_STATUSES[status],
            wages: cents(wages),
            agi: cents(agi),
            tax: cents(tax),
            refund: cents(refund),
            bank_account,
            state: p.state.abbr,
            tax_year: year.to_string(),
        }
    }

    pub fn death_date(&self, p: &Person) -> String {
        let mut rng = self.rng(p.index, 0xDEAD);
        date(2021 + i64::from(rng.random_range(0..5u32)), &mut rng)
    }

    pub fn fate(&self, p: &Person) -> Fate {
        let mut rng = self.rng(p.index, 0xFA7E);
        let age = 2025 - p.birth_year;
        let retired = age >= 66;
        let disabled = !retired && rng.random::<f64>() < 0.03;
        let benefit = (retired || disabled).then(|| {
            let monthly = if retired {
                1_900.0 + 450.0 * normal(&mut rng)
            } else {
                1_500.0 + 300.0 * normal(&mut rng)
            };
            Benefit {
                monthly: cents(monthly.clamp(50.0, 5_000.0)),
                account: p.bank_account.clone(),
            }
        });
        let death_risk = if age >= 80 {
            0.10
        } else if age >= 66 {
            0.04
        } else {
            0.005
        };
        let death_date = (rng.random::<f64>() < death_risk).then(|| self.death_date(p));
        Fate {
            benefit,
            death_date,
        }
    }
}

/// A simplified progressive income tax (2024 single brackets).
fn tax_on(taxable: f64) -> f64 {
    const BRACKETS: [(f64, f64); 7] = [
        (11_600.0, 0.10),
        (47_150.0, 0.12),
        (100_525.0, 0.22),
        (191_950.0, 0.24),
        (243_725.0, 0.32),
        (609_350.0, 0.35),
        (f64::INFINITY, 0.37),
    ];
    let mut tax = 0.0;
    let mut lower = 0.0;
    for (upper, rate) in BRACKETS {
        if taxable <= lower {
            break;
        }
        tax += (taxable.min(upper) - lower) * rate;
        lower = upper;
    }
    tax
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ssn_mapping_is_injective_at_block_edges() {
        let space = subject_space();
        let probes: Vec<u64> = (0..1000)
            .chain(BLOCK - 500..BLOCK + 500)
            .chain(2 * BLOCK - 500..2 * BLOCK + 500)
            .chain(space - 1000..space)
            .chain((0..898).map(|a| 2 * BLOCK + a * 10_000 + 9_999))
            .collect();
        let ssns: HashSet<String> = probes.iter().map(|&i| ssn_for(i)).collect();
        let distinct: HashSet<u64> = probes.iter().copied().collect();
        assert_eq!(ssns.len(), distinct.len());
        assert_eq!(ssn_for(0), "000-00-0000");
        assert_eq!(ssn_for(BLOCK), "666-00-0000");
        assert_eq!(ssn_for(2 * BLOCK), "001-00-0000");
        assert_eq!(ssn_for(space - 1), "899-00-9999");
    }

    #[test]
    fn tax_is_progressive() {
        assert_eq!(tax_on(0.0), 0.0);
        assert!((tax_on(11_600.0) - 1_160.0).abs() < 1e-6);
        assert!(tax_on(1_000_000.0) / 1_000_000.0 > tax_on(50_000.0) / 50_000.0);
    }
}
