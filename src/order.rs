//! The order of a job's tables by the foreign keys among them (pure): parents
//! before the tables that reference them, otherwise the order of the job file;
//! which tables each one waits for; and the cycle, when there is one.

/// A foreign key between two of the job's tables, by their place in the job file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignKey {
    /// The constraint's name, for messages.
    pub name: String,
    /// The table that holds the constraint (the referencing one).
    pub child: usize,
    /// The table it references.
    pub parent: usize,
}

/// Tables whose foreign keys reference each other in a ring: no order loads
/// them with every key enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    /// The tables in the cycle (or between two cycles), in file order.
    pub tables: Vec<usize>,
    /// The foreign keys among them, in the order given.
    pub keys: Vec<ForeignKey>,
}

/// The tables each of `n` tables references, self-references left out (a
/// table's rows are loaded together, whatever they reference within it), each
/// list in file order without repeats.
pub fn parents(n: usize, keys: &[ForeignKey]) -> Vec<Vec<usize>> {
    let mut parents = vec![Vec::new(); n];
    for key in keys.iter().filter(|k| k.child != k.parent) {
        let list: &mut Vec<usize> = &mut parents[key.child];
        if !list.contains(&key.parent) {
            list.push(key.parent);
        }
    }
    for list in &mut parents {
        list.sort_unstable();
    }
    parents
}

/// The `n` tables, parents first: of the tables whose parents are all placed,
/// the first in the file comes next (so a file already in order keeps it).
///
/// # Errors
///
/// The cycle, when some tables reference each other in a ring.
pub fn parents_first(n: usize, keys: &[ForeignKey]) -> Result<Vec<usize>, Cycle> {
    let parents = parents(n, keys);
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&t| !placed[t] && parents[t].iter().all(|&p| placed[p]));
        let Some(next) = next else {
            return Err(cycle(&parents, &placed, keys));
        };
        placed[next] = true;
        order.push(next);
    }
    Ok(order)
}

/// The tables left unplaced, less those hanging off a cycle (a table no other
/// unplaced table references is not part of one): what remains is the cycles.
fn cycle(parents: &[Vec<usize>], placed: &[bool], keys: &[ForeignKey]) -> Cycle {
    let mut left: Vec<bool> = placed.iter().map(|p| !p).collect();
    loop {
        let leaf = (0..left.len())
            .find(|&t| left[t] && !(0..left.len()).any(|c| left[c] && parents[c].contains(&t)));
        match leaf {
            Some(t) => left[t] = false,
            None => break,
        }
    }
    let tables: Vec<usize> = (0..left.len()).filter(|&t| left[t]).collect();
    let keys = keys
        .iter()
        .filter(|k| k.child != k.parent && left[k.child] && left[k.parent])
        .cloned()
        .collect();
    Cycle { tables, keys }
}

/// The order as `plan` and `check` print it: one table a line, with the tables
/// it waits for.
pub fn describe(names: &[String], order: &[usize], parents: &[Vec<usize>]) -> String {
    let mut text = String::from("tables in foreign-key order (parents first):\n");
    for (place, &t) in order.iter().enumerate() {
        text.push_str(&format!("  {}. {}", place + 1, names[t]));
        if !parents[t].is_empty() {
            let after: Vec<&str> = parents[t].iter().map(|&p| names[p].as_str()).collect();
            text.push_str(&format!(" (after {})", after.join(", ")));
        }
        text.push('\n');
    }
    text
}

/// A cycle as an error message names it.
pub fn describe_cycle(names: &[String], cycle: &Cycle) -> String {
    let tables: Vec<&str> = cycle.tables.iter().map(|&t| names[t].as_str()).collect();
    let keys: Vec<String> = cycle
        .keys
        .iter()
        .map(|k| format!("{} of {}", k.name, names[k.child]))
        .collect();
    format!(
        "the target's foreign keys form a cycle among {} ({})",
        tables.join(", "),
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(name: &str, child: usize, parent: usize) -> ForeignKey {
        ForeignKey {
            name: name.to_string(),
            child,
            parent,
        }
    }

    #[test]
    fn parents_come_first_and_file_order_breaks_ties() {
        // 0 rental -> 1 customer, 2 inventory; 2 inventory -> 3 film; 1 customer -> 4 address
        let keys = [
            fk("r_c", 0, 1),
            fk("r_i", 0, 2),
            fk("i_f", 2, 3),
            fk("c_a", 1, 4),
        ];
        assert_eq!(parents_first(5, &keys), Ok(vec![3, 2, 4, 1, 0]));
        // No keys: the file's order.
        assert_eq!(parents_first(4, &[]), Ok(vec![0, 1, 2, 3]));
        // Already in order: kept.
        assert_eq!(
            parents_first(3, &[fk("b_a", 1, 0), fk("c_b", 2, 1)]),
            Ok(vec![0, 1, 2])
        );
        // Independent tables keep their places around a pair.
        assert_eq!(parents_first(4, &[fk("a_d", 0, 3)]), Ok(vec![1, 2, 3, 0]));
    }

    #[test]
    fn self_references_and_repeated_keys_are_no_dependency() {
        let keys = [fk("staff_boss", 0, 0), fk("x", 0, 1), fk("y", 0, 1)];
        assert_eq!(parents_first(2, &keys), Ok(vec![1, 0]));
        assert_eq!(parents(2, &keys), vec![vec![1], vec![]]);
    }

    #[test]
    fn a_cycle_is_named_without_the_tables_around_it() {
        // 0 payment -> 1 staff; 1 staff -> 2 store; 2 store -> 1 staff; 2 store -> 3 address
        let keys = [
            fk("p_s", 0, 1),
            fk("staff_store", 1, 2),
            fk("store_manager", 2, 1),
            fk("store_address", 2, 3),
        ];
        assert_eq!(
            parents_first(4, &keys),
            Err(Cycle {
                tables: vec![1, 2],
                keys: vec![fk("staff_store", 1, 2), fk("store_manager", 2, 1)],
            })
        );
        // A ring of three.
        let ring = [fk("a", 0, 1), fk("b", 1, 2), fk("c", 2, 0)];
        assert_eq!(parents_first(3, &ring).unwrap_err().tables, vec![0, 1, 2]);
    }

    #[test]
    fn the_order_and_a_cycle_as_printed() {
        let names: Vec<String> = [
            "public.payment",
            "public.staff",
            "public.store",
            "public.address",
        ]
        .map(String::from)
        .to_vec();
        let keys = [
            fk("p_s", 0, 1),
            fk("s_a", 1, 3),
            fk("st_a", 2, 3),
            fk("p_st", 0, 2),
        ];
        let order = parents_first(4, &keys).unwrap();
        assert_eq!(
            describe(&names, &order, &parents(4, &keys)),
            "tables in foreign-key order (parents first):\n  \
             1. public.address\n  \
             2. public.staff (after public.address)\n  \
             3. public.store (after public.address)\n  \
             4. public.payment (after public.staff, public.store)\n"
        );
        let ring = [fk("staff_store", 1, 2), fk("store_manager", 2, 1)];
        let cycle = parents_first(4, &ring).unwrap_err();
        assert_eq!(
            describe_cycle(&names, &cycle),
            "the target's foreign keys form a cycle among public.staff, public.store \
             (staff_store of public.staff, store_manager of public.store)"
        );
    }

    #[test]
    fn every_table_once_and_after_its_parents() {
        // A deterministic spread of graphs without cycles (child > parent in a
        // shuffled numbering): each order is a permutation with parents first.
        for n in 1..9usize {
            for seed in 0..40usize {
                let step = if n % 5 == 0 { 3 } else { 5 };
                let perm: Vec<usize> = (0..n).map(|i| (i * step + seed) % n).collect();
                let mut keys = Vec::new();
                for c in 0..n {
                    for p in 0..c {
                        if (c * 7 + p * 3 + seed) % 4 == 0 {
                            keys.push(fk("k", perm[c], perm[p]));
                        }
                    }
                }
                let order = parents_first(n, &keys).expect("no cycle");
                let mut seen = order.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
                let at = |t: usize| order.iter().position(|&x| x == t).unwrap();
                for k in &keys {
                    if k.child != k.parent {
                        assert!(at(k.parent) < at(k.child), "{keys:?} {order:?}");
                    }
                }
            }
        }
    }
}
