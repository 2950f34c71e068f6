"""Federated LoRA fine-tuning: adapters (:mod:`.layers`), an offline pretrained base
(:mod:`.pretrain`), the model wrapper behind ``task.model.lora`` / ``task.model.pretrained``
(:mod:`.model`), the bundles ``fedavg_lora``, ``ffa_lora``, ``fedsvd_lora`` and ``fedrand``
(:mod:`.algorithms`) and membership inference at the positions those papers argue about
(:mod:`.membership`)."""
