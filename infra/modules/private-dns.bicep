// One private DNS zone, linked to the registry's VNet and, optionally, to a client VNet; or, in a
// hub-spoke network, an existing zone the hub links centrally (nothing created here).

param zoneName string
param vnetId string

@description('Resource id of another VNet whose clients resolve the registry privately; empty for none.')
param clientVnetId string = ''

@description('An existing zone\'s resource id (hub-spoke): used as it is; empty: this module makes the zone.')
param existingZoneId string = ''

param tags object

var own = empty(existingZoneId)

resource zone 'Microsoft.Network/privateDnsZones@2020-06-01' = if (own) {
  name: zoneName
  location: 'global'
  tags: tags
}

resource registryLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = if (own) {
  parent: zone
  name: 'registry-vnet'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}

resource clientLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = if (own && !empty(clientVnetId)) {
  parent: zone
  name: 'client-vnet'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: clientVnetId
    }
  }
}

output zoneId string = own ? zone.id : existingZoneId
