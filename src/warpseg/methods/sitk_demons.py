from warpseg.methods.identity import Identity


class SitkDemons(Identity):
    name = "sitk_demons"
