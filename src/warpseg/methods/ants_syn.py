from warpseg.methods.identity import Identity


class AntsSyn(Identity):
    name = "ants_syn"
