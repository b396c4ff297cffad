use stride::job::Job;

#[test]
fn props_explore() {
    let base =
        "[source]\nurl='postgres://u:pw_abc@h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n";
    let cases: Vec<String> = vec![
        "[source]\nurl = \"${SOURCE_URL\"\ntable = 't'\n[target]\nurl = \"postgres://u:pw_secret@h/d\"\n[run]\nparallelism = ${PAR}\n".into(),
        "[source]\nurl=\"postgres://u:pw_x\\q@h/d\"\ntable='t'\n".into(),
        "[source]\nurl=\"postgres://u:pw_x\\uZZZZ@h/d\"\ntable='t'\n".into(),
        "[source]\nurl=\"postgres://u:pw_x\\UFFFFFFFF@h/d\"\ntable='t'\n".into(),
        "\"a b\".\"c.d\" = 1\n".into(),
        "[source]\n\"ur l\" = 1\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\ncolumns = [1]\n[target]\nurl='postgres://h/d'\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\ncolumns = ['a', 'pw_x']\n[target]\nurl='postgres://h/d'\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\n[partition]\ncolumn='c'\nlower_bound=1979-05-27T07:32:00Z\nupper_bound=07:32:00\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\n[partition]\ncolumn='c'\nlower_bound=1979-05-27\nupper_bound=-9223372036854775808\ncount=-9223372036854775808\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\nbatch_size=-0x10\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\nbatch_size=0x10\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\nbatch_size=nan\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\nbatch_size=inf\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\nbatch_size=1e3\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\nbatch_size=1_000\n".into(),
        "[source]\nurl = 'postgres:u:pw_x@h/d'\ntable = 't'\n[target]\nurl='postgres://h/d'\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d?options[x]=pw_y'\ntable = 't'\n[target]\nurl='postgres://h/d'\n".into(),
        "[source]\nurl = 'postgres://u:pw_x@h/d?pw_y'\ntable = 't'\n[target]\nurl='postgres://h/d'\n".into(),
        "".into(),
        "retries = 3\n".to_string() + base,
        "[retry]\nx=1\n".to_string() + base,
        "[source]\nurl='postgres://h/d'\n".into(),
        "[target]\nurl='postgres://h/d'\n".into(),
        "[source]\ntable='t'\n[target]\nurl='postgres://h/d'\n".into(),
        format!("{base}[partition]\ncount=99999999999999999999999\n"),
        format!("{base}[partition]\ncolumn='x'\ncount=1.5\n"),
        format!("{base}[partition]\ncolumn='x'\nlower_bound=1.5\nupper_bound=2\n"),
        format!("{base}[partition]\ncolumn='x'\nlower_bound=[1]\nupper_bound=2\n"),
        format!("{base}[partition]\ncolumn='x'\ncount='postgres://u:pw_leak@h/d'\n"),
        format!("{base}[partition]\ncolumns=['postgres://u:pw_leak@h/d']\n"),
        format!("{base}mode='x'\n"),
        "source = 5\n".into(),
        "source = []\n".into(),
        "[[source]]\nurl='x'\n".into(),
        "a.b.c = 1\n".into(),
        "x".into(),
        "\u{0}".into(),
        "[source\n".into(),
        "[source]\nurl=\"postgres://u:pw_x\"x@h/d\"\ntable='t'\n".into(),
        "[source]\nurl=\"postgres://u:pw_x@h/d\nx\"\ntable='t'\n".into(),
        "[source]\nurl=\"\"\"postgres://u:pw_x@h/d\"\"\"\"\"\"\ntable='t'\n".into(),
        format!("{base}[run]\nparallelism=true\n"),
        format!("{base}[run]\nparallelism=1979-05-27T07:32:00Z\n"),
        format!("[source]\nurl='postgres://u:pw_x@h:99999/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n"),
        format!("[source]\nurl='postgres://u:pw_x@h/d?password=pw_y&foo=pw_z'\ntable='t'\n[target]\nurl='postgres://h/d'\n"),
        format!("[source]\nurl='postgres://u:pw_x@[::1/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n"),
        format!("[source]\nurl='postgres://u:pw_x@h/d'\ntable='t'\nurl='x'\n[target]\nurl='postgres://h/d'\n"),
        format!("[source]\nurl='postgres://u:pw_x@h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[source]\nx=1\n"),
    ];
    for c in cases {
        match Job::parse(&c, |_| None) {
            Ok(_) => println!("OK   {c:?}"),
            Err(e) => println!("ERR  {c:?}\n   -> {e}"),
        }
    }
}
